"""BatchNorm semantics: PyTorch's running statistics, eval mode, batch of one."""

from __future__ import annotations

import numpy as np
import pytest

from dualnn import layers as L
from dualnn.errors import ShapeError
from tests.conftest import to_host


def test_initial_state(backend):
    bn = L.BatchNorm(3)
    state = bn.state_dict()
    assert state["gamma"].tolist() == [1, 1, 1] and state["beta"].tolist() == [0, 0, 0]
    assert state["running_mean"].tolist() == [0, 0, 0]
    assert state["running_var"].tolist() == [1, 1, 1]
    assert [p.name for p in bn.parameters()] == ["gamma", "beta"]


def test_training_forward_and_running_statistics(backend, rng):
    host = rng.standard_normal((10, 4)) * 2 + 5
    bn = L.BatchNorm(4, momentum=0.2, dtype="float64")
    y = to_host(backend, bn.forward(backend.asarray(host, "float64"), training=True))
    mean, var = host.mean(axis=0), host.var(axis=0)
    np.testing.assert_allclose(y, (host - mean) / np.sqrt(var + 1e-5), rtol=1e-10)
    state = bn.state_dict()
    np.testing.assert_allclose(state["running_mean"], 0.8 * 0 + 0.2 * mean, rtol=1e-12)
    np.testing.assert_allclose(state["running_var"], 0.8 * 1 + 0.2 * host.var(axis=0, ddof=1),
                               rtol=1e-12)


def test_eval_uses_running_statistics_and_accepts_one_row(backend, rng):
    bn = L.BatchNorm(3, dtype="float64")
    backend.assign(bn.running_mean, backend.asarray(np.array([1.0, 2.0, 3.0]), "float64"))
    backend.assign(bn.running_var, backend.asarray(np.array([4.0, 1.0, 0.25]), "float64"))
    x = np.array([[3.0, 2.0, 4.0]])
    y = to_host(backend, bn.forward(backend.asarray(x, "float64"), training=False))
    np.testing.assert_allclose(y, (x - [1, 2, 3]) / np.sqrt(np.array([4, 1, 0.25]) + 1e-5))


def test_batch_of_one_in_training_is_a_clear_error(backend):
    bn = L.BatchNorm(3)
    before = bn.state_dict()
    with pytest.raises(ShapeError, match="more than 1 row"):
        bn.forward(backend.asarray(np.ones((1, 3)), "float32"), training=True)
    after = bn.state_dict()
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])


def test_large_mean_small_std_float32(backend, rng):
    host = (1e4 + 1e-2 * rng.standard_normal((256, 8))).astype(np.float32)
    bn = L.BatchNorm(8)
    y = to_host(backend, bn.forward(backend.asarray(host, "float32"), training=True))
    x64 = host.astype(np.float64)
    want = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5)
    np.testing.assert_allclose(y, want, atol=2e-2)
    assert abs(float(np.std(y)) - float(np.std(want))) < 2e-2
