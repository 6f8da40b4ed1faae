"""Finite-difference gradient checks (float64) of every layer and loss, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
from dualnn import layers as L

TOL = 1e-7


def _x(backend, rng, shape):
    return backend.asarray(rng.standard_normal(shape), "float64")


ELEMENTWISE = [
    ("Identity", lambda: L.Identity()),
    ("Sigmoid", lambda: L.Sigmoid()),
    ("Tanh", lambda: L.Tanh()),
    ("ReLU", lambda: L.ReLU()),
    ("LeakyReLU", lambda: L.LeakyReLU(0.2)),
    ("ELU", lambda: L.ELU(0.7)),
    ("Softmax", lambda: L.Softmax()),
]


@pytest.mark.parametrize("name,make", ELEMENTWISE, ids=[n for n, _ in ELEMENTWISE])
def test_activation_gradients(backend, rng, name, make):
    report = dn.gradcheck(make(), _x(backend, rng, (5, 7)))
    assert report.passed, str(report)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients(backend, rng, bias):
    layer = L.Linear(6, 4, bias=bias, dtype="float64")
    backend.assign(layer.weight.data, _x(backend, rng, (4, 6)))
    report = dn.gradcheck(layer, _x(backend, rng, (5, 6)))
    assert report.passed, str(report)
    assert [t.name for t in report.tensors] == (["weight", "bias", "input"] if bias
                                                else ["weight", "input"])


@pytest.mark.parametrize("batch,features", [(2, 3), (3, 4), (64, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradients(backend, rng, batch, features, training):
    # With two rows x-hat is +-1 whatever x is, so dL/dx is ~0 up to eps's effect; a
    # large eps keeps that gradient well above finite-difference noise.
    layer = L.BatchNorm(features, eps=1.0 if batch == 2 else 1e-5, dtype="float64")
    backend.assign(layer.gamma.data, _x(backend, rng, (features,)))
    backend.assign(layer.beta.data, _x(backend, rng, (features,)))
    backend.assign(layer.running_mean, _x(backend, rng, (features,)))
    backend.assign(layer.running_var, backend.asarray(rng.uniform(0.5, 2, features), "float64"))
    report = dn.gradcheck(layer, _x(backend, rng, (batch, features)) * 3 + 1, training=training)
    assert report.passed, str(report)


def test_fused_batchnorm_relu_block_gradients(backend, rng):
    model = dn.Sequential(L.Linear(5, 6, bias=False, dtype="float64"),
                          L.BatchNorm(6, dtype="float64"), L.ReLU(),
                          L.Linear(6, 3, dtype="float64"))
    backend.assign(model[1].beta.data, _x(backend, rng, (6,)) * 0.5)
    assert type(model.plan()[1][1]).__name__ == "BatchNormReLU" and model.plan()[1][0] == 1
    report = dn.gradcheck(model, _x(backend, rng, (8, 5)))
    assert report.passed, str(report)


def test_dropout_gradients_with_fixed_mask(backend, rng):
    report = dn.gradcheck(L.Dropout(0.4), _x(backend, rng, (6, 5)), training=True)
    assert report.passed, str(report)


def _labels(backend, rng, n, k):
    return backend.asarray(rng.integers(0, k, n))


@pytest.mark.parametrize("loss_name", ["SoftmaxCrossEntropy", "Hinge", "MSE",
                                       "BinaryCrossEntropy"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_loss_gradients(backend, rng, loss_name, reduction):
    model = dn.Sequential(L.Linear(4, 5, dtype="float64"), L.Tanh(),
                          L.Linear(5, 3, dtype="float64"))
    loss = getattr(dn.losses, loss_name)(reduction=reduction)
    if loss_name in ("SoftmaxCrossEntropy", "Hinge"):
        target = _labels(backend, rng, 7, 3)
    elif loss_name == "MSE":
        target = _x(backend, rng, (7, 3))
    else:
        target = backend.asarray(rng.uniform(0, 1, (7, 3)), "float64")
    report = dn.gradcheck(model, _x(backend, rng, (7, 4)), loss, target)
    assert report.passed, str(report)


def test_whole_model_gradients(backend, rng):
    model = dn.Sequential(L.Linear(4, 6, dtype="float64"), L.BatchNorm(6, dtype="float64"),
                          L.ELU(), L.Dropout(0.25), L.Linear(6, 6, dtype="float64"),
                          L.LeakyReLU(), L.Linear(6, 3, dtype="float64"))
    report = dn.gradcheck(model, _x(backend, rng, (9, 4)), dn.losses.SoftmaxCrossEntropy(),
                          _labels(backend, rng, 9, 3), training=True)
    assert report.passed, str(report)


def test_gradcheck_catches_a_wrong_backward(backend, rng):
    class WrongTanh(L.Tanh):
        def backward(self, dy):
            return dy  # forgets the derivative

    report = dn.gradcheck(WrongTanh(), _x(backend, rng, (3, 4)))
    assert not report.passed
    assert report.max_error > 1e-3


def test_gradcheck_rejects_float32_parameters(backend):
    from dualnn.errors import ShapeError

    with pytest.raises(ShapeError, match="float64"):
        dn.gradcheck(L.Linear(2, 2), backend.asarray(np.ones((2, 2)), "float64"))


@pytest.mark.parametrize("act", [L.ReLU, lambda: L.LeakyReLU(0.1), L.Sigmoid, L.Tanh])
def test_fused_linear_activation_matches_unfused(backend, rng, act):
    def build(fuse):
        dn.seed(5)
        return dn.Sequential(L.Linear(5, 6, dtype="float64"), act(),
                             L.Linear(6, 3, dtype="float64"), fuse=fuse)

    fused, plain = build(True), build(False)
    assert type(fused.plan()[0][1]).__name__ == "LinearActivation"
    assert plain.plan()[0][1] is plain[0]
    for model in (fused, plain):
        backend.assign(model[0].bias.data, _x(backend, rng, (6,)))
    plain.load_state_dict(fused.state_dict())
    x = _x(backend, rng, (7, 5))
    dy = _x(backend, rng, (7, 3))
    outs = []
    for model in (fused, plain):
        y = model.forward(x, training=True)
        dx = model.backward(dy)
        outs.append((backend.to_host(y), backend.to_host(dx),
                     {n: backend.to_host(p.grad) for n, p in model.named_parameters()}))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-12)
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-12)
    for name in outs[0][2]:
        np.testing.assert_allclose(outs[0][2][name], outs[1][2][name], rtol=1e-12, atol=1e-15)
    assert dn.gradcheck(fused, x).passed
