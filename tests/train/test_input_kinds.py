"""Every documented kind of input array works on every path: read-only, memory-mapped,
non-contiguous, Fortran-ordered, float64 (cast by fit/evaluate/predict) and integer labels
of every width — for fit, evaluate and predict, and for the low-level forward/backward."""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn


def _model():
    dn.seed(0)
    return dn.Sequential(dn.layers.BatchNorm(6), dn.layers.Linear(6, 8), dn.layers.ReLU(),
                         dn.layers.Linear(8, 3))


def _data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 6))
    y = rng.integers(0, 3, 40)
    return X, y


def _kinds(tmp_path):
    X, _ = _data()
    readonly = X.astype(np.float32)
    readonly.setflags(write=False)
    np.save(tmp_path / "X.npy", X.astype(np.float32))
    wide = np.zeros((40, 12), np.float32)
    wide[:, ::2] = X
    return {
        "float32": X.astype(np.float32),
        "float64": X,
        "read-only": readonly,
        "memory-mapped": np.load(tmp_path / "X.npy", mmap_mode="r"),
        "non-contiguous": wide[:, ::2],
        "fortran": np.asfortranarray(X.astype(np.float32)),
    }


KINDS = ["float32", "float64", "read-only", "memory-mapped", "non-contiguous", "fortran"]
LABELS = ["int8", "uint8", "int16", "int32", "int64", "uint64"]


@pytest.mark.parametrize("kind", KINDS)
def test_fit_evaluate_predict_take_every_input_kind(kind, tmp_path):
    X = _kinds(tmp_path)[kind]
    _, y = _data()
    reference = _model()
    expected = dn.predict(reference, np.ascontiguousarray(X, dtype=np.float32))
    model = _model()
    np.testing.assert_allclose(dn.predict(model, X), expected, rtol=1e-6, atol=1e-6)
    scores = dn.evaluate(model, dn.losses.SoftmaxCrossEntropy(), X, y)
    assert np.isfinite(scores["loss"])
    history = dn.fit(model, dn.losses.SoftmaxCrossEntropy(),
                     dn.optim.SGD(model.parameters(), lr=0.1), X, y, epochs=1,
                     batch_size=16, shuffle=False, progress=False)
    assert np.isfinite(history["loss"][0])


@pytest.mark.parametrize("label_dtype", LABELS)
def test_fit_takes_integer_labels_of_every_width(label_dtype):
    X, y = _data()
    model = _model()
    history = dn.fit(model, dn.losses.SoftmaxCrossEntropy(),
                     dn.optim.SGD(model.parameters(), lr=0.1), X, y.astype(label_dtype),
                     epochs=1, batch_size=16, progress=False)
    assert np.isfinite(history["loss"][0])


@pytest.mark.parametrize("kind", ["float32", "read-only", "memory-mapped", "non-contiguous",
                                  "fortran"])
def test_forward_and_backward_take_every_float32_layout(kind, tmp_path):
    X = _kinds(tmp_path)[kind]
    before = X.copy()
    plain = np.ascontiguousarray(X, dtype=np.float32)
    model_a, model_b = _model(), _model()
    out_a = model_a.forward(X, training=True)
    out_b = model_b.forward(plain, training=True)
    np.testing.assert_allclose(out_a, out_b, rtol=1e-6, atol=1e-6)
    dy = np.asfortranarray(np.ones_like(out_b)) if kind == "fortran" else np.ones_like(out_b)
    dx_a = model_a.backward(dy)
    dx_b = model_b.backward(np.ones_like(out_b))
    np.testing.assert_allclose(dx_a, dx_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(X, before)  # the caller's input is never written
