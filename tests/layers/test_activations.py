"""Activation values, subgradients at the kink, and numerical robustness."""

from __future__ import annotations

import numpy as np
import pytest

from dualnn import layers as L
from dualnn.errors import DualnnError
from tests.conftest import to_host


def _grad_at(backend, layer, values):
    x = backend.asarray(np.asarray(values, dtype=np.float64)[None, :], "float64")
    layer.forward(x, training=True)
    return to_host(backend, layer.backward(backend.asarray(np.ones((1, len(values))), "float64")))[0]


def test_subgradients_at_zero_follow_pytorch(backend):
    assert _grad_at(backend, L.ReLU(), [0.0, -1.0, 2.0]).tolist() == [0.0, 0.0, 1.0]
    assert _grad_at(backend, L.LeakyReLU(0.1), [0.0, -1.0, 2.0]).tolist() == \
        pytest.approx([0.1, 0.1, 1.0])
    assert _grad_at(backend, L.ELU(0.5), [0.0, 3.0]).tolist() == pytest.approx([0.5, 1.0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_and_tanh_do_not_overflow(backend, dtype):
    values = np.array([[-1e4, -100.0, 0.0, 100.0, 1e4, -np.inf, np.inf]])
    x = backend.asarray(values, dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = to_host(backend, L.Sigmoid().forward(x))
        t = to_host(backend, L.Tanh().forward(x))
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(t))
    assert y[0].tolist() == pytest.approx([0, 0, 0.5, 1, 1, 0, 1], abs=1e-30)
    assert t[0].tolist() == pytest.approx([-1, -1, 0, 1, 1, -1, 1])


def test_elu_large_inputs_are_finite(backend):
    x = backend.asarray(np.array([[-1e4, 1e4, 50.0]]), "float32")
    y = to_host(backend, L.ELU().forward(x))
    assert y[0].tolist() == pytest.approx([-1.0, 1e4, 50.0])


def test_values_match_formulas(backend, rng):
    host = rng.standard_normal((4, 5)) * 3
    x = backend.asarray(host, "float64")
    expect = {
        "ReLU": np.maximum(host, 0),
        "LeakyReLU": np.where(host > 0, host, 0.01 * host),
        "ELU": np.where(host > 0, host, np.expm1(host)),
        "Sigmoid": 1 / (1 + np.exp(-host)),
        "Tanh": np.tanh(host),
        "Identity": host,
        "Softmax": np.exp(host) / np.exp(host).sum(axis=1, keepdims=True),
        "Step": (host >= 0).astype(float),
    }
    for name, want in expect.items():
        got = to_host(backend, getattr(L, name)().forward(x))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15, err_msg=name)


def test_softmax_is_stable_for_huge_logits(backend):
    x = backend.asarray(np.array([[1000.0, 1000.0, -1000.0]]), "float32")
    y = to_host(backend, L.Softmax().forward(x))
    np.testing.assert_allclose(y, [[0.5, 0.5, 0.0]], atol=1e-7)


def test_step_is_inference_only(backend):
    layer = L.Step()
    x = backend.asarray(np.array([[0.0, -0.5, 2.0]]), "float32")
    assert to_host(backend, layer.forward(x)).tolist() == [[1.0, 0.0, 1.0]]
    with pytest.raises(DualnnError, match="inference"):
        layer.backward(x)


def test_activations_follow_input_dtype(backend):
    for dtype in ("float32", "float64"):
        x = backend.asarray(np.ones((2, 3)), dtype)
        for layer in (L.ReLU(), L.Sigmoid(), L.Softmax(), L.ELU()):
            assert to_host(backend, layer.forward(x)).dtype == np.dtype(dtype)


def test_relu_and_batchnorm_relu_pass_nan_through(backend):
    import dualnn as dn

    x = backend.asarray(np.array([[np.nan, -1.0, 2.0]]), "float64")
    assert np.isnan(to_host(backend, L.ReLU().forward(x))[0, 0])
    model = dn.Sequential(L.BatchNorm(3, dtype="float64"), L.ReLU())
    for training in (False, True):
        batch = backend.asarray(np.array([[np.nan, -1.0, 2.0], [1.0, 1.0, 1.0]]), "float64")
        model.check_input = lambda x: None  # reach the fused block with a NaN
        y = to_host(backend, model.forward(batch, training=training))
        assert np.isnan(y[:, 0]).all() if training else np.isnan(y[0, 0])
