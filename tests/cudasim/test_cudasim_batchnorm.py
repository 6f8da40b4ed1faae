"""Batch-norm kernels (train/eval forward, backward) against the reference, in the simulator.

The reductions are deterministic by construction (fixed row slices, ordered merge); these
tests check that bit for bit across repeated runs and different block shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
from cudasim_helpers import DTYPES
from dualnn.kernels import reference

EPS = 1e-5
MOMENTUM = 0.1
SHAPES = [(2, 1), (5, 7), (16, 9), (33, 3)]


def _bn_tol(dtype):
    return {"rtol": 2e-4, "atol": 2e-5} if dtype == "float32" else {"rtol": 1e-10, "atol": 1e-12}


def _inputs(rng, n, c, dtype):
    x = (rng.standard_normal((n, c)) * 2 + rng.standard_normal(c)).astype(dtype)
    gamma = (rng.standard_normal(c) + 1).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    running_mean = rng.standard_normal(c).astype(dtype)
    running_var = (rng.random(c) + 0.5).astype(dtype)
    return x, gamma, beta, running_mean, running_var


def _train(ck, x, gamma, beta, rm, rv, relu, scratch=None, out=None):
    n, c = x.shape
    scratch = np.empty(ck.batchnorm_scratch_shape(n, c), x.dtype) if scratch is None \
        else scratch
    out = np.empty_like(x) if out is None else out
    mean = np.empty(c, x.dtype)
    invstd = np.empty(c, x.dtype)
    return ck.batchnorm_forward_train(x, gamma, beta, rm, rv, EPS, MOMENTUM, relu, out=out,
                                      mean=mean, invstd=invstd, scratch=scratch)


def _backward(ck, dy, x, gamma, beta, mean, invstd, relu, scratch=None, out=None):
    n, c = x.shape
    scratch = np.empty(ck.batchnorm_scratch_shape(n, c), x.dtype) if scratch is None \
        else scratch
    out = np.empty_like(x) if out is None else out
    return ck.batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu, out=out,
                                 dgamma=np.empty(x.shape[1], x.dtype),
                                 dbeta=np.empty(x.shape[1], x.dtype), scratch=scratch)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_forward_train_matches_reference(ck, rng, shape, dtype, relu):
    x, gamma, beta, rm, rv = _inputs(rng, *shape, dtype)
    y_ref, mean_ref, invstd_ref, rm_ref, rv_ref = reference.batchnorm_forward_train(
        np, x, gamma, beta, rm, rv, EPS, MOMENTUM, relu)
    y, mean, invstd = _train(ck, x, gamma, beta, rm, rv, relu)
    tol = _bn_tol(dtype)
    np.testing.assert_allclose(mean, mean_ref, **tol)
    np.testing.assert_allclose(invstd, invstd_ref, **tol)
    np.testing.assert_allclose(y, y_ref, **tol)
    np.testing.assert_allclose(rm, rm_ref, **tol)  # running stats updated in place
    np.testing.assert_allclose(rv, rv_ref, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_backward_matches_reference(ck, rng, shape, dtype, relu):
    x, gamma, beta, rm, rv = _inputs(rng, *shape, dtype)
    _, mean, invstd, _, _ = reference.batchnorm_forward_train(np, x, gamma, beta, rm, rv, EPS,
                                                              MOMENTUM)
    mean, invstd = mean.astype(dtype), invstd.astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    dx_ref, dgamma_ref, dbeta_ref = reference.batchnorm_backward(np, dy, x, gamma, beta, mean,
                                                                 invstd, relu)
    dx, dgamma, dbeta = _backward(ck, dy, x, gamma, beta, mean, invstd, relu)
    tol = _bn_tol(dtype)
    np.testing.assert_allclose(dbeta, dbeta_ref, **tol)
    np.testing.assert_allclose(dgamma, dgamma_ref, **tol)
    np.testing.assert_allclose(dx, dx_ref, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [False, True])
def test_forward_eval_matches_reference_batch_of_one(ck, rng, dtype, relu):
    for n in (1, 6):
        x, gamma, beta, rm, rv = _inputs(rng, n, 5, dtype)
        expected = reference.batchnorm_forward_eval(np, x, gamma, beta, rm, rv, EPS, relu)
        out = np.empty_like(x)
        ck.batchnorm_forward_eval(x, gamma, beta, rm, rv, EPS, relu, out=out)
        np.testing.assert_allclose(out, expected, **_bn_tol(dtype))
        ck.batchnorm_forward_eval(x, gamma, beta, rm, rv, EPS, relu, out=x)  # in place
        np.testing.assert_allclose(x, expected, **_bn_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_many_slices_and_grid_stride(tiny_grid, rng, dtype):
    """2x2 blocks and 3 rows per slice: every loop strides, the merge sees 6 slices."""
    ck = tiny_grid
    x, gamma, beta, rm, rv = _inputs(rng, 16, 9, dtype)
    assert ck.batchnorm_scratch_shape(16, 9) == (2, 6, 9)
    y_ref, _mean_ref, _invstd_ref, _rm_ref, rv_ref = reference.batchnorm_forward_train(
        np, x, gamma, beta, rm, rv, EPS, MOMENTUM, True)
    y, mean, invstd = _train(ck, x, gamma, beta, rm, rv, True)
    tol = _bn_tol(dtype)
    np.testing.assert_allclose(y, y_ref, **tol)
    np.testing.assert_allclose(rv, rv_ref, **tol)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx_ref, dg_ref, _db_ref = reference.batchnorm_backward(np, dy, x, gamma, beta, mean, invstd,
                                                          True)
    dx, dg, _db = _backward(ck, dy, x, gamma, beta, mean, invstd, True)
    np.testing.assert_allclose(dg, dg_ref, **tol)
    np.testing.assert_allclose(dx, dx_ref, **tol)


def test_more_slices_than_rows(ck, rng):
    """Slices past the last row hold nothing and are skipped by the merge."""
    x, gamma, beta, rm, rv = _inputs(rng, 3, 4, "float64")
    scratch = np.full((2, 7, 4), np.nan)  # stale contents must not leak in
    y_ref, mean_ref, _invstd_ref, _, _ = reference.batchnorm_forward_train(
        np, x, gamma, beta, rm, rv, EPS, MOMENTUM)
    y, mean, invstd = _train(ck, x, gamma, beta, rm, rv, False, scratch=scratch)
    np.testing.assert_allclose(mean, mean_ref, 1e-12)
    np.testing.assert_allclose(y, y_ref, 1e-10, 1e-12)
    dy = rng.standard_normal(x.shape)
    dx_ref, _dg_ref, db_ref = reference.batchnorm_backward(np, dy, x, gamma, beta, mean, invstd)
    dx, _dg, db = _backward(ck, dy, x, gamma, beta, mean, invstd, False, scratch=scratch)
    np.testing.assert_allclose(db, db_ref, 1e-12, 1e-14)
    np.testing.assert_allclose(dx, dx_ref, 1e-10, 1e-12)


def test_accurate_for_a_mean_far_from_zero(ck, rng):
    """float32 features at 1e4 +- 1e-2: shifted Welford keeps variance and output accurate."""
    x = (1e4 + 1e-2 * rng.standard_normal((32, 3))).astype(np.float32)
    ones, zeros = np.ones(3, np.float32), np.zeros(3, np.float32)
    x64 = x.astype(np.float64)
    exact_var = np.var(x64, axis=0)
    exact_y = (x64 - x64.mean(axis=0)) / np.sqrt(exact_var + 1e-8)
    y, _mean, invstd = ck.batchnorm_forward_train(
        x, ones, zeros, zeros.copy(), ones.copy(), 1e-8, MOMENTUM, out=np.empty_like(x),
        mean=np.empty(3, np.float32), invstd=np.empty(3, np.float32),
        scratch=np.empty(ck.batchnorm_scratch_shape(32, 3), np.float32))
    np.testing.assert_allclose(1 / invstd.astype(np.float64) ** 2, exact_var, rtol=1e-3)
    np.testing.assert_allclose(y, exact_y, atol=2e-3)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_constant_feature_and_edge_values(ck):
    """A constant column has var 0 (y = beta); NaN/inf in a column poison only that column."""
    x = np.array([[3.0, 1.0, 1.0], [3.0, np.nan, np.inf], [3.0, 2.0, 0.0]], np.float32)
    ones, zeros = np.ones(3, np.float32), np.zeros(3, np.float32)
    beta = np.array([0.5, 0.0, 0.0], np.float32)
    y, _mean, _invstd = _train(ck, x, ones, beta, zeros.copy(), ones.copy(), False)
    y_ref, *_ = reference.batchnorm_forward_train(np, x, ones, beta, zeros, ones, EPS, MOMENTUM)
    np.testing.assert_allclose(y[:, 0], [0.5, 0.5, 0.5])
    assert np.isnan(y[:, 1]).all() and np.isnan(y_ref[:, 1]).all()
    assert np.isnan(y[:, 2]).all() and np.isnan(y_ref[:, 2]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_aliasing_out_is_input(ck, rng, dtype):
    """Forward into x itself (elementwise last pass); backward dx into dy itself."""
    x, gamma, beta, rm, rv = _inputs(rng, 6, 5, dtype)
    y_ref, mean_ref, invstd_ref, _, _ = reference.batchnorm_forward_train(
        np, x, gamma, beta, rm, rv, EPS, MOMENTUM, True)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx_ref, _, _ = reference.batchnorm_backward(np, dy, x, gamma, beta, mean_ref.astype(dtype),
                                                invstd_ref.astype(dtype), True)
    dx, _, _ = _backward(ck, dy, x, gamma, beta, mean_ref.astype(dtype),
                         invstd_ref.astype(dtype), True, out=dy)
    assert dx is dy
    np.testing.assert_allclose(dy, dx_ref, **_bn_tol(dtype))
    work = x.copy()
    y, _, _ = _train(ck, work, gamma, beta, rm, rv, True, out=work)
    assert y is work
    np.testing.assert_allclose(work, y_ref, **_bn_tol(dtype))


def test_deterministic_across_runs_and_block_shapes(ck, rng):
    """Same scratch shape -> bit-identical results, whatever the block shape."""
    x, gamma, beta, rm, rv = _inputs(rng, 16, 9, "float32")
    dy = rng.standard_normal(x.shape).astype(np.float32)
    results = []
    for bx, by in [(32, 8), (4, 2), (1, 1), (9, 3)]:
        ck.config.bn_block_features, ck.config.bn_block_slices = bx, by
        ck.config.block = 8 if bx < 32 else 256
        rm_run, rv_run = rm.copy(), rv.copy()
        scratch = np.empty((2, 4, 9), np.float32)
        y, mean, invstd = _train(ck, x, gamma, beta, rm_run, rv_run, False, scratch=scratch)
        dx, dg, db = _backward(ck, dy, x, gamma, beta, mean, invstd, False, scratch=scratch)
        results.append([a.copy() for a in (y, mean, invstd, rm_run, rv_run, dx, dg, db)])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)  # bitwise


class TestLauncherChecks:
    def test_training_needs_two_rows(self, ck):
        x = np.zeros((1, 3), np.float32)
        v = np.zeros(3, np.float32)
        with pytest.raises(ValueError, match="at least 2 rows"):
            ck.batchnorm_forward_train(x, v, v, v, v, EPS, MOMENTUM, out=x, mean=v, invstd=v,
                                       scratch=np.zeros((2, 1, 3), np.float32))

    def test_bad_scratch(self, ck):
        x = np.zeros((4, 3), np.float32)
        v = np.zeros(3, np.float32)
        with pytest.raises(ValueError, match="scratch"):
            ck.batchnorm_forward_train(x, v, v, v, v, EPS, MOMENTUM, out=x, mean=v,
                                       invstd=v, scratch=np.zeros((2, 1, 4), np.float32))

    def test_vector_dtype_and_shape(self, ck):
        x = np.zeros((4, 3), np.float32)
        v = np.zeros(3, np.float32)
        with pytest.raises(TypeError, match="gamma"):
            ck.batchnorm_forward_eval(x, v.astype(np.float64), v, v, v, EPS, out=x)
        with pytest.raises(ValueError, match="beta"):
            ck.batchnorm_forward_eval(x, v, np.zeros(4, np.float32), v, v, EPS, out=x)
