"""Loss values, reductions and label checking, against formulas written out in NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from dualnn import losses
from dualnn.errors import ShapeError
from tests.conftest import to_host


def _logits(backend, rng, n=6, k=4):
    host = rng.standard_normal((n, k)) * 2
    return host, backend.asarray(host, "float64")


def test_softmax_cross_entropy_value_and_gradient(backend, rng):
    host, z = _logits(backend, rng)
    labels = np.array([0, 3, 1, 1, 2, 0])
    loss = losses.SoftmaxCrossEntropy()
    value = float(to_host(backend, loss.forward(z, backend.asarray(labels))))
    p = np.exp(host - host.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert value == pytest.approx(-np.log(p[np.arange(6), labels]).mean(), rel=1e-12)
    onehot = np.eye(4)[labels]
    np.testing.assert_allclose(to_host(backend, loss.backward()), (p - onehot) / 6, rtol=1e-10)


def test_softmax_cross_entropy_is_stable(backend):
    z = backend.asarray(np.array([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]]), "float32")
    loss = losses.SoftmaxCrossEntropy()
    value = float(to_host(backend, loss.forward(z, backend.asarray(np.array([1, 2])))))
    assert np.isfinite(value)
    assert value == pytest.approx((1e4 + np.log(3)) / 2, rel=1e-5)
    assert np.all(np.isfinite(to_host(backend, loss.backward())))


def test_mse_has_no_half_and_averages_all_elements(backend, rng):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    loss = losses.MSE()
    value = float(to_host(backend, loss.forward(backend.asarray(a, "float64"),
                                                backend.asarray(b, "float64"))))
    assert value == pytest.approx(((a - b) ** 2).mean())
    np.testing.assert_allclose(to_host(backend, loss.backward()), 2 * (a - b) / 12)
    total = losses.MSE(reduction="sum")
    value = float(to_host(backend, total.forward(backend.asarray(a, "float64"),
                                                 backend.asarray(b, "float64"))))
    assert value == pytest.approx(((a - b) ** 2).sum())


def test_binary_cross_entropy_on_logits(backend):
    z = np.array([[-800.0, -1.0, 0.0, 2.0, 800.0]])
    t = np.array([[0.0, 1.0, 0.5, 0.0, 1.0]])
    loss = losses.BinaryCrossEntropy()
    value = float(to_host(backend, loss.forward(backend.asarray(z, "float64"),
                                                backend.asarray(t, "float64"))))
    terms = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
    assert value == pytest.approx(terms.mean())
    sig = np.array([0.0, 1 / (1 + np.e), 0.5, 1 / (1 + np.exp(-2)), 1.0])
    np.testing.assert_allclose(to_host(backend, loss.backward())[0], (sig - t[0]) / 5, atol=1e-15)


@pytest.mark.parametrize("divide", [True, False])
def test_hinge_matches_multi_class_svm(backend, rng, divide):
    host, z = _logits(backend, rng, 5, 3)
    labels = np.array([0, 1, 2, 2, 0])
    loss = losses.Hinge(divide_by_classes=divide)
    value = float(to_host(backend, loss.forward(z, backend.asarray(labels))))
    total = 0.0
    for i, y in enumerate(labels):
        for j in range(3):
            if j != y:
                total += max(0.0, 1 - host[i, y] + host[i, j])
    assert value == pytest.approx(total / 5 / (3 if divide else 1))


@pytest.mark.parametrize("labels,match", [
    (np.array([0, 1, 4, 0, 1, 2]), r"\[0, 4\).*from 0 to 4"),
    (np.array([0, -1, 2, 0, 1, 2]), r"from -1 to 2"),
    (np.array([0, 1, 2]), r"shape \(6,\)"),
    (np.array([[0], [1], [2], [0], [1], [2]]), r"shape \(6,\)"),
    (np.array([0.0, 1, 2, 0, 1, 2]), "integer"),
])
@pytest.mark.parametrize("cls", [losses.SoftmaxCrossEntropy, losses.Hinge])
def test_bad_labels_are_clear_errors(backend, rng, labels, match, cls):
    _, z = _logits(backend, rng)
    with pytest.raises(ShapeError, match=match):
        cls().forward(z, backend.asarray(labels))


def test_shape_mismatch_of_float_targets(backend):
    z = backend.asarray(np.zeros((2, 3)), "float32")
    with pytest.raises(ShapeError, match=r"\(2, 3\)"):
        losses.MSE().forward(z, backend.asarray(np.zeros((3, 2)), "float32"))


def test_backward_before_forward(backend):
    with pytest.raises(ShapeError, match="before forward"):
        losses.MSE().backward()


def test_minus_inf_logit_off_the_label_costs_nothing(backend):
    z = backend.asarray(np.array([[-np.inf, 0.0, 0.0]]), "float64")
    loss = losses.SoftmaxCrossEntropy()
    value = float(to_host(backend, loss.forward(z, backend.asarray(np.array([1])))))
    assert value == pytest.approx(np.log(2.0))
    np.testing.assert_allclose(to_host(backend, loss.backward()), [[0.0, -0.5, 0.5]])


def _loss_case(name, backend, rng):
    z = rng.standard_normal((5, 3)) * 3
    if name in ("softmax_cross_entropy", "hinge"):
        target = backend.asarray(np.array([0, 2, 1, 1, 0]))
    elif name == "mse":
        target = backend.asarray(rng.standard_normal((5, 3)), "float64")
    else:
        target = backend.asarray((rng.random((5, 3)) > 0.5).astype(np.float64), "float64")
    return backend.asarray(z, "float64"), target


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ["mse", "binary_cross_entropy", "softmax_cross_entropy",
                                  "hinge"])
def test_out_receives_the_loss(backend, rng, name, reduction):
    """``forward(..., out=a)`` writes the loss into the 0-d ``a`` and returns it; value and
    gradient equal the plain call's."""
    z, target = _loss_case(name, backend, rng)
    plain = losses.get(name)(reduction=reduction)
    want = float(to_host(backend, plain.forward(z, target)))
    want_grad = np.array(to_host(backend, plain.backward()))
    loss = losses.get(name)(reduction=reduction)
    out = backend.zeros((), "float64")
    got = loss.forward(z, target, out=out)
    assert got is out
    assert float(to_host(backend, out)) == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(to_host(backend, loss.backward()), want_grad, rtol=1e-12)
    assert loss(z, target, out=out) is out


def test_out_must_be_a_0d_array_of_the_predictions_dtype(backend, rng):
    z, target = _loss_case("mse", backend, rng)
    for bad in (backend.zeros((1,), "float64"), backend.zeros((), "float32")):
        with pytest.raises(ShapeError, match="out must be a 0-d float64 array"):
            losses.MSE().forward(z, target, out=bad)
