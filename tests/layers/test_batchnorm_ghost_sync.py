"""Ghost batch norm (per-chunk statistics) and synchronized batch norm in one process."""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
import dualnn.distributed
from dualnn import layers as L
from dualnn.errors import ConfigurationError
from tests.conftest import to_host


def _x(backend, rng, shape, dtype="float64"):
    return backend.asarray(rng.standard_normal(shape) * 2 + 0.5, dtype)


@pytest.mark.parametrize("n,g,expected", [(12, 4, [(0, 4), (4, 8), (8, 12)]),
                                          (9, 4, [(0, 4), (4, 9)]),
                                          (10, 4, [(0, 4), (4, 8), (8, 10)])])
def test_ghost_chunks_and_a_one_row_tail_joins_the_previous_chunk(n, g, expected):
    assert L.BatchNorm(3, ghost_batch_size=g)._ghost_bounds(n) == expected


def test_ghost_forward_equals_consecutive_ordinary_batches(backend, rng):
    """Each chunk is normalized alone; the running statistics move once per chunk, as
    an ordinary batch norm fed the chunks one after another."""
    x = _x(backend, rng, (11, 5))
    ghost = L.BatchNorm(5, momentum=0.3, dtype="float64", ghost_batch_size=4)
    plain = L.BatchNorm(5, momentum=0.3, dtype="float64")
    y = to_host(backend, ghost.forward(x, training=True))
    xh = to_host(backend, x)
    parts = [to_host(backend, plain.forward(backend.asarray(xh[s:e]), training=True))
             for s, e in [(0, 4), (4, 8), (8, 11)]]
    np.testing.assert_allclose(y, np.concatenate(parts), rtol=1e-12, atol=1e-12)
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(to_host(backend, getattr(ghost, name)),
                                   to_host(backend, getattr(plain, name)), rtol=1e-12)
    # and differs from whole-batch normalization
    whole = to_host(backend, L.BatchNorm(5, dtype="float64").forward(x, training=True))
    assert np.max(np.abs(whole - y)) > 1e-3


def test_ghost_running_statistics_match_torch_fed_chunk_by_chunk(rng):
    torch = pytest.importorskip("torch")
    xh = rng.standard_normal((10, 3)) * 3 + 1
    ghost = L.BatchNorm(3, momentum=0.2, dtype="float64", ghost_batch_size=5)
    ghost.forward(ghost.backend.asarray(xh), training=True)
    ref = torch.nn.BatchNorm1d(3, momentum=0.2, dtype=torch.float64)
    for s in (0, 5):
        ref(torch.from_numpy(xh[s:s + 5]))
    np.testing.assert_allclose(ghost.backend.to_host(ghost.running_mean),
                               ref.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ghost.backend.to_host(ghost.running_var),
                               ref.running_var.numpy(), rtol=1e-12)


@pytest.mark.parametrize("relu", [False, True])
def test_ghost_gradients_by_finite_differences(backend, rng, relu):
    bn = L.BatchNorm(4, dtype="float64", ghost_batch_size=3)
    backend.assign(bn.gamma.data, backend.asarray(rng.uniform(0.5, 1.5, 4), "float64"))
    backend.assign(bn.beta.data, backend.asarray(rng.uniform(-0.5, 0.5, 4), "float64"))
    layer = dn.Sequential(bn, L.ReLU()) if relu else bn
    if relu:
        assert type(layer.plan()[0][1]).__name__ == "BatchNormReLU"
    report = dn.gradcheck(layer, _x(backend, rng, (8, 4)))
    assert report.passed, str(report)


def test_ghost_backward_sums_each_chunks_gradients(backend, rng):
    x = _x(backend, rng, (8, 3))
    dy = _x(backend, rng, (8, 3))
    ghost = L.BatchNorm(3, dtype="float64", ghost_batch_size=4)
    ghost.forward(x, training=True)
    dx = to_host(backend, ghost.backward(dy))
    xh, dyh = to_host(backend, x), to_host(backend, dy)
    dxs, dg = [], 0
    for s in (0, 4):
        plain = L.BatchNorm(3, dtype="float64")
        plain.forward(backend.asarray(xh[s:s + 4]), training=True)
        dxs.append(to_host(backend, plain.backward(backend.asarray(dyh[s:s + 4]))))
        dg = dg + to_host(backend, plain.gamma.grad)
    np.testing.assert_allclose(dx, np.concatenate(dxs), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(to_host(backend, ghost.gamma.grad), dg, rtol=1e-10)


def test_ghost_batch_not_larger_than_the_batch_is_ordinary(backend, rng):
    x = _x(backend, rng, (6, 3))
    a = L.BatchNorm(3, dtype="float64", ghost_batch_size=6)
    b = L.BatchNorm(3, dtype="float64")
    np.testing.assert_array_equal(to_host(backend, a.forward(x, training=True)),
                                  to_host(backend, b.forward(x, training=True)))


@pytest.mark.parametrize("fuse", [True, False])
def test_sync_before_init_is_exactly_ordinary_batch_norm(backend, rng, fuse):
    assert not dn.distributed.is_initialized()
    x = _x(backend, rng, (16, 6), "float32")
    dy = _x(backend, rng, (16, 6), "float32")
    results = []
    for sync in (False, True):
        model = dn.Sequential(L.BatchNorm(6, sync=sync), L.ReLU(), fuse=fuse)
        y = to_host(backend, model.forward(x, training=True))
        dx = to_host(backend, model.backward(dy))
        bn = model[0]
        results.append([y, dx, to_host(backend, bn.gamma.grad), to_host(backend, bn.beta.grad),
                        to_host(backend, bn.running_mean), to_host(backend, bn.running_var)])
        if fuse:
            assert type(model.plan()[0][1]).__name__ == "BatchNormReLU"
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_config_carries_ghost_and_sync_through_a_checkpoint(tmp_path):
    model = dn.Sequential(L.Linear(3, 4), L.BatchNorm(4, ghost_batch_size=8), L.ReLU(),
                          L.BatchNorm(4, sync=True))
    path = tmp_path / "m.npz"
    dn.save(path, model)
    model = dn.load(path).model
    assert model[1].ghost_batch_size == 8 and model[1].sync is False
    assert model[3].sync is True and model[3].ghost_batch_size is None
    assert model[1].get_config()["ghost_batch_size"] == 8


@pytest.mark.parametrize("kwargs", [{"ghost_batch_size": 1}, {"ghost_batch_size": 2.5},
                                    {"ghost_batch_size": True}, {"sync": 1},
                                    {"sync": True, "ghost_batch_size": 4}])
def test_bad_ghost_or_sync_arguments(kwargs):
    with pytest.raises(ConfigurationError):
        L.BatchNorm(3, **kwargs)
