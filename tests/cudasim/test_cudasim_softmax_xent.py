"""Softmax cross-entropy kernels (row pass + one-block mean) against the reference."""

from __future__ import annotations

import numpy as np
import pytest
from cudasim_helpers import DTYPES
from dualnn.kernels import reference


def _run(ck, logits, labels):
    n = logits.shape[0]
    loss = np.full((), 99.0, logits.dtype)
    dlogits = np.empty_like(logits)
    row_loss = np.empty(ck.softmax_cross_entropy_scratch_shape(n), logits.dtype)
    result = ck.softmax_cross_entropy(logits, labels, loss=loss, dlogits=dlogits,
                                      row_loss=row_loss)
    assert result[0] is loss and result[1] is dlogits
    return loss, dlogits


def _tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-14}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label_dtype", ["int32", "int64"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 4), (6, 5), (37, 3)])
def test_matches_reference(ck, rng, shape, dtype, label_dtype):
    n, k = shape
    logits = (rng.standard_normal(shape) * 3).astype(dtype)
    labels = rng.integers(0, k, n).astype(label_dtype)
    loss_ref, dlogits_ref = reference.softmax_cross_entropy(np, logits, labels)
    loss, dlogits = _run(ck, logits, labels)
    assert loss.shape == ()
    np.testing.assert_allclose(loss, loss_ref, **_tol(dtype))
    np.testing.assert_allclose(dlogits, dlogits_ref, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_stable_for_huge_logits(ck, dtype):
    """|z| ~ 1e4 and 3e38-ish spreads: the max shift keeps exp from overflowing."""
    logits = np.array([[1e4, -1e4, 0.0], [5e3, 5e3, 5e3], [-1e4, -1e4 + 1, -1e4 - 1]], dtype)
    labels = np.array([1, 0, 2])
    loss_ref, dlogits_ref = reference.softmax_cross_entropy(np, logits, labels)
    loss, dlogits = _run(ck, logits, labels)
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    np.testing.assert_allclose(loss, loss_ref, **_tol(dtype))
    np.testing.assert_allclose(dlogits, dlogits_ref, **_tol(dtype))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_and_inf_logits_give_nan(ck):
    logits = np.array([[0.0, np.nan, 1.0], [np.inf, 0.0, 1.0], [1.0, 2.0, 3.0]], np.float32)
    loss, dlogits = _run(ck, logits, np.array([0, 0, 2]))
    assert np.isnan(loss)
    assert np.isnan(dlogits[:2]).all() and np.isfinite(dlogits[2]).all()


def test_minus_inf_logit_is_a_zero_probability(ck):
    """A -inf logit off the label costs nothing (mathematically exact)."""
    logits = np.array([[-np.inf, 0.0, 0.0]], np.float64)
    loss, dlogits = _run(ck, logits, np.array([1]))
    np.testing.assert_allclose(loss, np.log(2.0))
    np.testing.assert_allclose(dlogits, [[0.0, -0.5, 0.5]])


def test_label_out_of_range_is_nan_not_an_out_of_bounds_read(ck):
    logits = np.zeros((3, 4), np.float32)
    loss, dlogits = _run(ck, logits, np.array([0, 4, -1]))
    assert np.isnan(loss)
    assert np.isfinite(dlogits[0]).all() and np.isnan(dlogits[1:]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_grid_stride_and_tree_mean(tiny_grid, rng, dtype):
    """8 row threads for 37 rows, a 4-thread mean tree: still the reference."""
    ck = tiny_grid
    logits = rng.standard_normal((37, 3)).astype(dtype)
    labels = rng.integers(0, 3, 37)
    loss_ref, dlogits_ref = reference.softmax_cross_entropy(np, logits, labels)
    loss, dlogits = _run(ck, logits, labels)
    np.testing.assert_allclose(loss, loss_ref, **_tol(dtype))
    np.testing.assert_allclose(dlogits, dlogits_ref, **_tol(dtype))


def test_deterministic(ck, rng):
    logits = rng.standard_normal((37, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 37)
    first = [a.copy() for a in _run(ck, logits, labels)]
    second = _run(ck, logits, labels)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


class TestLauncherChecks:
    def test_float_labels(self, ck):
        logits = np.zeros((2, 3), np.float32)
        with pytest.raises(TypeError, match="labels"):
            _run(ck, logits, np.zeros(2, np.float32))

    def test_label_shape(self, ck):
        logits = np.zeros((2, 3), np.float32)
        with pytest.raises(ValueError, match="labels"):
            _run(ck, logits, np.zeros(3, np.int64))

    def test_loss_dtype_and_size(self, ck):
        logits = np.zeros((2, 3), np.float32)
        kw = {"dlogits": np.empty_like(logits), "row_loss": np.empty(2, np.float32)}
        with pytest.raises(TypeError, match="loss"):
            ck.softmax_cross_entropy(logits, np.zeros(2, np.int64),
                                     loss=np.empty((), np.float64), **kw)
        with pytest.raises(ValueError, match="loss"):
            ck.softmax_cross_entropy(logits, np.zeros(2, np.int64),
                                     loss=np.empty(2, np.float32), **kw)
