"""Batch-norm kernels (train/eval forward, backward, fused ReLU): reference, CPU and
CUDA-simulator twins from one set of cases, then stability, determinism, fallbacks,
read-only inputs and simulator reduction layouts.
"""

from __future__ import annotations

import numpy as np
import pytest
from dualnn.kernels import reference
from dualnn.kernels import reference as R

import dualnn as dn

from .cases import (
    CUDASIM,
    DEVICES,
    DTYPE_NAMES,
    device_kernels,
    tolerances,
)
from .cpu_cases import (
    BN_SHAPES,
    DTYPES,
    FUSED,
    UNFUSED,
    assert_close,
    bn_inputs,
    rand,
)

# ------------------------------------------------------------ every device, one set of cases

def _bn_case(rng, shape, dtype):
    n, c = shape
    x = (2 * rng.standard_normal(shape) + rng.standard_normal(c)).astype(dtype)
    gamma = (1 + 0.5 * rng.standard_normal(c)).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    rm = rng.standard_normal(c).astype(dtype)
    rv = (1 + rng.random(c)).astype(dtype)
    return x, gamma, beta, rm, rv


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(2, 1), (5, 7), (16, 9)])
def test_batchnorm_twins_agree_on_every_device(device, shape, relu, dtype):
    k = device_kernels(device)
    rng = np.random.default_rng(shape[0] + 10 * relu)
    x, gamma, beta, rm, rv = _bn_case(rng, shape, dtype)
    n, c = shape
    rtol, atol = tolerances(dtype)
    rtol, atol = rtol * 10, atol * 100  # reductions: summation order differs per device
    y, mean, invstd, erm, erv = R.batchnorm_forward_train(np, x, gamma, beta, rm, rv, 1e-5,
                                                          0.1, relu)
    scratch = np.empty(k.batchnorm_scratch_shape(n, c), dtype)
    rm2, rv2 = rm.copy(), rv.copy()
    got = k.batchnorm_forward_train(x, gamma, beta, rm2, rv2, 1e-5, 0.1, relu,
                                    out=np.empty_like(x), mean=np.empty_like(gamma),
                                    invstd=np.empty_like(gamma), scratch=scratch)
    for g, e in zip(got + (rm2, rv2), (y, mean, invstd, erm, erv)):
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)
    ye = R.batchnorm_forward_eval(np, x, gamma, beta, rm, rv, 1e-5, relu)
    np.testing.assert_allclose(k.batchnorm_forward_eval(x, gamma, beta, rm, rv, 1e-5, relu,
                                                        out=np.empty_like(x)),
                               ye, rtol=rtol, atol=atol)
    dy = rng.standard_normal(shape).astype(dtype)
    expected = R.batchnorm_backward(np, dy, x, gamma, beta, mean, invstd, relu)
    got = k.batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu, out=np.empty_like(x),
                               dgamma=np.empty_like(gamma), dbeta=np.empty_like(gamma),
                               scratch=scratch)
    for g, e in zip(got, expected):
        scale = float(np.abs(e).max()) if e.size else 1.0
        np.testing.assert_allclose(g, e, rtol=rtol * 10, atol=atol * 10 * max(scale, 1.0))


def test_read_only_input_goes_through_the_fused_batchnorm():
    """A model starting with BatchNorm on a memory-mapped (read-only) batch: this raised
    Numba's TypingError before, the in-place branch of the kernel writing through ``x``."""
    rng = np.random.default_rng(5)
    x, gamma, beta, rm, rv = _bn_case(rng, (32, 6), "float32")
    x.setflags(write=False)
    want = R.batchnorm_forward_train(np, x, gamma, beta, rm, rv, 1e-5, 0.1, True)
    got = FUSED.batchnorm_forward_train(x, gamma, beta, rm, rv, 1e-5, 0.1, True)
    assert_close(got[0], want[0], np.float32)
    np.testing.assert_allclose(rm, want[3], rtol=1e-5, atol=1e-6)
    assert_close(FUSED.batchnorm_forward_eval(x, gamma, beta, rm, rv, 1e-5, True),
                 R.batchnorm_forward_eval(np, x, gamma, beta, rm, rv, 1e-5, True), np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dy.setflags(write=False)
    for g, w in zip(FUSED.batchnorm_backward(dy, x, gamma, beta, got[1], got[2], True),
                    R.batchnorm_backward(np, dy, x, gamma, beta, got[1], got[2], True)):
        assert_close(g, w, np.float32, scale=10 * float(np.abs(w).max()))


def test_memory_mapped_batch_through_a_model(tmp_path):

    rng = np.random.default_rng(6)
    np.save(tmp_path / "x.npy", rng.standard_normal((16, 4)).astype(np.float32))
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert not x.flags.writeable
    with dn.use_backend(FUSED):
        y = dn.layers.BatchNorm(4).forward(x, training=True)
    want = (x - np.mean(x, axis=0)) / np.sqrt(np.var(x, axis=0) + 1e-5)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------ CPU only: larger shapes, fallbacks, in place

@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_forward_train_matches_reference(shape, dtype, relu):
    rng = np.random.default_rng(3)
    x, gamma, beta, rm, rv = bn_inputs(rng, shape, dtype)
    y, mean, invstd, erm, erv = R.batchnorm_forward_train(np, x, gamma, beta, rm, rv, 1e-5,
                                                          0.1, relu)
    rm2, rv2 = rm.copy(), rv.copy()
    out, m2, s2 = FUSED.batchnorm_forward_train(x, gamma, beta, rm2, rv2, 1e-5, 0.1, relu)
    for got, want in ((out, y), (m2, mean), (s2, invstd), (rm2, erm), (rv2, erv)):
        assert got.dtype == dtype
        assert_close(got, want, dtype)
    # in place on x (its own loop in the kernel): bit-identical to the out-of-place call
    xx, rm3, rv3 = x.copy(), rm.copy(), rv.copy()
    got, _, _ = FUSED.batchnorm_forward_train(xx, gamma, beta, rm3, rv3, 1e-5, 0.1, relu, out=xx)
    assert got is xx
    np.testing.assert_array_equal(xx, out)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 9)] + BN_SHAPES)
def test_batchnorm_forward_eval_matches_reference(shape, dtype, relu):
    rng = np.random.default_rng(4)
    x, gamma, beta, rm, rv = bn_inputs(rng, shape, dtype)
    expected = R.batchnorm_forward_eval(np, x, gamma, beta, rm, rv, 1e-5, relu)
    assert_close(FUSED.batchnorm_forward_eval(x, gamma, beta, rm, rv, 1e-5, relu), expected,
                 dtype)
    xx = x.copy()
    assert FUSED.batchnorm_forward_eval(xx, gamma, beta, rm, rv, 1e-5, relu, out=xx) is xx
    assert_close(xx, expected, dtype)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_backward_matches_reference(shape, dtype, relu):
    rng = np.random.default_rng(5)
    x, gamma, beta, rm, rv = bn_inputs(rng, shape, dtype)
    _, mean, invstd, _, _ = R.batchnorm_forward_train(np, x, gamma, beta, rm, rv, 1e-5, 0.1)
    dy = rand(rng, shape, dtype)
    # float64 truth from the same (rounded) inputs: the float32 reference sums in float32
    up = [a.astype(np.float64) for a in (dy, x, gamma, beta, mean, invstd)]
    edx, edg, edb = R.batchnorm_backward(np, *up, relu)
    dx, dg, db = FUSED.batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu)
    for got, want in ((dx, edx), (dg, edg), (db, edb)):
        assert got.dtype == dtype
        assert_close(got, want, dtype, scale=float(np.abs(want).max()) * 10
                     if dtype == np.float32 else None)
    # out aliasing dy gives the same result
    buf = dy.copy()
    dx2, dg2, db2 = FUSED.batchnorm_backward(buf, x, gamma, beta, mean, invstd, relu, out=buf)
    assert dx2 is buf
    np.testing.assert_array_equal(dx2, dx)
    np.testing.assert_array_equal(dg2, dg)


def test_batchnorm_train_stable_for_large_mean_float32():
    rng = np.random.default_rng(6)
    n, c = 256, 64
    x = (1e4 + 1e-2 * rng.standard_normal((n, c))).astype(np.float32)
    gamma = np.ones(c, np.float32)
    beta = np.zeros(c, np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    y, mean, invstd = FUSED.batchnorm_forward_train(x, gamma, beta, rm, rv, 1e-8, 0.1)
    x64 = x.astype(np.float64)
    true_mean = x64.mean(axis=0)
    true_var = x64.var(axis=0)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(true_var + 1e-8), rtol=1e-5)
    np.testing.assert_allclose(mean, true_mean, rtol=1e-7)
    np.testing.assert_allclose(rv, 0.9 + 0.1 * true_var * n / (n - 1), rtol=1e-6)
    # normalized output: as exact as float32 allows (centered on x[0], not on a rounded mean)
    want = (x64 - true_mean) / np.sqrt(true_var + 1e-8)
    np.testing.assert_allclose(y, want, atol=1e-4)
    np.testing.assert_allclose(y.astype(np.float64).std(axis=0), 1.0, rtol=1e-4)
    assert np.all(np.abs(y.astype(np.float64).mean(axis=0)) <= 1e-5)


def test_batchnorm_nan_and_inf_propagate_like_reference():
    rng = np.random.default_rng(7)
    x, gamma, beta, rm, rv = bn_inputs(rng, (9, 4), np.float64)
    x[3, 1] = np.nan
    x[0, 2] = np.inf
    with np.errstate(all="ignore"):
        y, mean, invstd, _, _ = R.batchnorm_forward_train(np, x, gamma, beta, rm, rv, 1e-5, 0.1)
        out, m2, s2 = FUSED.batchnorm_forward_train(x, gamma, beta, rm.copy(), rv.copy(), 1e-5,
                                                    0.1)
    for got, want in ((out, y), (m2, mean), (s2, invstd)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert_close(out[:, [0, 3]], y[:, [0, 3]], np.float64)


def test_batchnorm_batch_of_one_falls_back_like_reference():
    x = np.ones((1, 3))
    for backend in (FUSED, UNFUSED):
        with pytest.raises(ZeroDivisionError):
            backend.batchnorm_forward_train(x, np.ones(3), np.zeros(3), np.zeros(3),
                                            np.ones(3), 1e-5, 0.1)


def test_batchnorm_non_contiguous_falls_back():
    rng = np.random.default_rng(8)
    x, gamma, beta, rm, rv = bn_inputs(rng, (20, 12), np.float32)
    xs = np.asfortranarray(x)
    y, mean, invstd, _, _ = R.batchnorm_forward_train(np, xs, gamma, beta, rm, rv, 1e-5, 0.1)
    out, m2, s2 = FUSED.batchnorm_forward_train(xs, gamma, beta, rm.copy(), rv.copy(), 1e-5,
                                                0.1)
    np.testing.assert_array_equal(out, y)
    dy = rand(rng, (12, 20), np.float32).T
    ref = R.batchnorm_backward(np, dy, x, gamma, beta, mean, invstd)
    got = FUSED.batchnorm_backward(dy, x, gamma, beta, mean, invstd)
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g, r)


# ------------------------------------------------------------ CUDA simulator: launch geometry, launcher checks


SIM_EPS = 1e-5


SIM_MOMENTUM = 0.1


SIM_SHAPES = [(2, 1), (5, 7), (16, 9), (33, 3)]


def _sim_bn_tol(dtype):
    return {"rtol": 2e-4, "atol": 2e-5} if dtype == "float32" else {"rtol": 1e-10, "atol": 1e-12}


def _sim_inputs(rng, n, c, dtype):
    x = (rng.standard_normal((n, c)) * 2 + rng.standard_normal(c)).astype(dtype)
    gamma = (rng.standard_normal(c) + 1).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    running_mean = rng.standard_normal(c).astype(dtype)
    running_var = (rng.random(c) + 0.5).astype(dtype)
    return x, gamma, beta, running_mean, running_var


def _sim_train(ck, x, gamma, beta, rm, rv, relu, scratch=None, out=None):
    n, c = x.shape
    scratch = np.empty(ck.batchnorm_scratch_shape(n, c), x.dtype) if scratch is None \
        else scratch
    out = np.empty_like(x) if out is None else out
    mean = np.empty(c, x.dtype)
    invstd = np.empty(c, x.dtype)
    return ck.batchnorm_forward_train(x, gamma, beta, rm, rv, SIM_EPS, SIM_MOMENTUM, relu, out=out,
                                      mean=mean, invstd=invstd, scratch=scratch)


def _sim_backward(ck, dy, x, gamma, beta, mean, invstd, relu, scratch=None, out=None):
    n, c = x.shape
    scratch = np.empty(ck.batchnorm_scratch_shape(n, c), x.dtype) if scratch is None \
        else scratch
    out = np.empty_like(x) if out is None else out
    return ck.batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu, out=out,
                                 dgamma=np.empty(x.shape[1], x.dtype),
                                 dbeta=np.empty(x.shape[1], x.dtype), scratch=scratch)


@CUDASIM
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("shape", SIM_SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_cudasim_forward_train_matches_reference(ck, rng, shape, dtype, relu):
    x, gamma, beta, rm, rv = _sim_inputs(rng, *shape, dtype)
    y_ref, mean_ref, invstd_ref, rm_ref, rv_ref = reference.batchnorm_forward_train(
        np, x, gamma, beta, rm, rv, SIM_EPS, SIM_MOMENTUM, relu)
    y, mean, invstd = _sim_train(ck, x, gamma, beta, rm, rv, relu)
    tol = _sim_bn_tol(dtype)
    np.testing.assert_allclose(mean, mean_ref, **tol)
    np.testing.assert_allclose(invstd, invstd_ref, **tol)
    np.testing.assert_allclose(y, y_ref, **tol)
    np.testing.assert_allclose(rm, rm_ref, **tol)  # running stats updated in place
    np.testing.assert_allclose(rv, rv_ref, **tol)


@CUDASIM
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("shape", SIM_SHAPES)
@pytest.mark.parametrize("relu", [False, True])
def test_cudasim_backward_matches_reference(ck, rng, shape, dtype, relu):
    x, gamma, beta, rm, rv = _sim_inputs(rng, *shape, dtype)
    _, mean, invstd, _, _ = reference.batchnorm_forward_train(np, x, gamma, beta, rm, rv, SIM_EPS,
                                                              SIM_MOMENTUM)
    mean, invstd = mean.astype(dtype), invstd.astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    dx_ref, dgamma_ref, dbeta_ref = reference.batchnorm_backward(np, dy, x, gamma, beta, mean,
                                                                 invstd, relu)
    dx, dgamma, dbeta = _sim_backward(ck, dy, x, gamma, beta, mean, invstd, relu)
    tol = _sim_bn_tol(dtype)
    np.testing.assert_allclose(dbeta, dbeta_ref, **tol)
    np.testing.assert_allclose(dgamma, dgamma_ref, **tol)
    np.testing.assert_allclose(dx, dx_ref, **tol)


@CUDASIM
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("relu", [False, True])
def test_cudasim_forward_eval_matches_reference_batch_of_one(ck, rng, dtype, relu):
    for n in (1, 6):
        x, gamma, beta, rm, rv = _sim_inputs(rng, n, 5, dtype)
        expected = reference.batchnorm_forward_eval(np, x, gamma, beta, rm, rv, SIM_EPS, relu)
        out = np.empty_like(x)
        ck.batchnorm_forward_eval(x, gamma, beta, rm, rv, SIM_EPS, relu, out=out)
        np.testing.assert_allclose(out, expected, **_sim_bn_tol(dtype))
        ck.batchnorm_forward_eval(x, gamma, beta, rm, rv, SIM_EPS, relu, out=x)  # in place
        np.testing.assert_allclose(x, expected, **_sim_bn_tol(dtype))


@CUDASIM
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_cudasim_many_slices_and_grid_stride(tiny_grid, rng, dtype):
    """2x2 blocks and 3 rows per slice: every loop strides, the merge sees 6 slices."""
    ck = tiny_grid
    x, gamma, beta, rm, rv = _sim_inputs(rng, 16, 9, dtype)
    assert ck.batchnorm_scratch_shape(16, 9) == (2, 6, 9)
    y_ref, _mean_ref, _invstd_ref, _rm_ref, rv_ref = reference.batchnorm_forward_train(
        np, x, gamma, beta, rm, rv, SIM_EPS, SIM_MOMENTUM, True)
    y, mean, invstd = _sim_train(ck, x, gamma, beta, rm, rv, True)
    tol = _sim_bn_tol(dtype)
    np.testing.assert_allclose(y, y_ref, **tol)
    np.testing.assert_allclose(rv, rv_ref, **tol)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx_ref, dg_ref, _db_ref = reference.batchnorm_backward(np, dy, x, gamma, beta, mean, invstd,
                                                          True)
    dx, dg, _db = _sim_backward(ck, dy, x, gamma, beta, mean, invstd, True)
    np.testing.assert_allclose(dg, dg_ref, **tol)
    np.testing.assert_allclose(dx, dx_ref, **tol)


@CUDASIM
def test_cudasim_more_slices_than_rows(ck, rng):
    """Slices past the last row hold nothing and are skipped by the merge."""
    x, gamma, beta, rm, rv = _sim_inputs(rng, 3, 4, "float64")
    scratch = np.full((2, 7, 4), np.nan)  # stale contents must not leak in
    y_ref, mean_ref, _invstd_ref, _, _ = reference.batchnorm_forward_train(
        np, x, gamma, beta, rm, rv, SIM_EPS, SIM_MOMENTUM)
    y, mean, invstd = _sim_train(ck, x, gamma, beta, rm, rv, False, scratch=scratch)
    np.testing.assert_allclose(mean, mean_ref, 1e-12)
    np.testing.assert_allclose(y, y_ref, 1e-10, 1e-12)
    dy = rng.standard_normal(x.shape)
    dx_ref, _dg_ref, db_ref = reference.batchnorm_backward(np, dy, x, gamma, beta, mean, invstd)
    dx, _dg, db = _sim_backward(ck, dy, x, gamma, beta, mean, invstd, False, scratch=scratch)
    np.testing.assert_allclose(db, db_ref, 1e-12, 1e-14)
    np.testing.assert_allclose(dx, dx_ref, 1e-10, 1e-12)


@CUDASIM
def test_cudasim_accurate_for_a_mean_far_from_zero(ck, rng):
    """float32 features at 1e4 +- 1e-2: shifted Welford keeps variance and output accurate."""
    x = (1e4 + 1e-2 * rng.standard_normal((32, 3))).astype(np.float32)
    ones, zeros = np.ones(3, np.float32), np.zeros(3, np.float32)
    x64 = x.astype(np.float64)
    exact_var = np.var(x64, axis=0)
    exact_y = (x64 - x64.mean(axis=0)) / np.sqrt(exact_var + 1e-8)
    y, _mean, invstd = ck.batchnorm_forward_train(
        x, ones, zeros, zeros.copy(), ones.copy(), 1e-8, SIM_MOMENTUM, out=np.empty_like(x),
        mean=np.empty(3, np.float32), invstd=np.empty(3, np.float32),
        scratch=np.empty(ck.batchnorm_scratch_shape(32, 3), np.float32))
    np.testing.assert_allclose(1 / invstd.astype(np.float64) ** 2, exact_var, rtol=1e-3)
    np.testing.assert_allclose(y, exact_y, atol=2e-3)


@CUDASIM
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_cudasim_constant_feature_and_edge_values(ck):
    """A constant column has var 0 (y = beta); NaN/inf in a column poison only that column."""
    x = np.array([[3.0, 1.0, 1.0], [3.0, np.nan, np.inf], [3.0, 2.0, 0.0]], np.float32)
    ones, zeros = np.ones(3, np.float32), np.zeros(3, np.float32)
    beta = np.array([0.5, 0.0, 0.0], np.float32)
    y, _mean, _invstd = _sim_train(ck, x, ones, beta, zeros.copy(), ones.copy(), False)
    y_ref, *_ = reference.batchnorm_forward_train(np, x, ones, beta, zeros, ones, SIM_EPS, SIM_MOMENTUM)
    np.testing.assert_allclose(y[:, 0], [0.5, 0.5, 0.5])
    assert np.isnan(y[:, 1]).all() and np.isnan(y_ref[:, 1]).all()
    assert np.isnan(y[:, 2]).all() and np.isnan(y_ref[:, 2]).all()


@CUDASIM
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_cudasim_aliasing_out_is_input(ck, rng, dtype):
    """Forward into x itself (elementwise last pass); backward dx into dy itself."""
    x, gamma, beta, rm, rv = _sim_inputs(rng, 6, 5, dtype)
    y_ref, mean_ref, invstd_ref, _, _ = reference.batchnorm_forward_train(
        np, x, gamma, beta, rm, rv, SIM_EPS, SIM_MOMENTUM, True)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx_ref, _, _ = reference.batchnorm_backward(np, dy, x, gamma, beta, mean_ref.astype(dtype),
                                                invstd_ref.astype(dtype), True)
    dx, _, _ = _sim_backward(ck, dy, x, gamma, beta, mean_ref.astype(dtype),
                         invstd_ref.astype(dtype), True, out=dy)
    assert dx is dy
    np.testing.assert_allclose(dy, dx_ref, **_sim_bn_tol(dtype))
    work = x.copy()
    y, _, _ = _sim_train(ck, work, gamma, beta, rm, rv, True, out=work)
    assert y is work
    np.testing.assert_allclose(work, y_ref, **_sim_bn_tol(dtype))


@CUDASIM
def test_cudasim_deterministic_across_runs_and_block_shapes(ck, rng):
    """Same scratch shape -> bit-identical results, whatever the block shape."""
    x, gamma, beta, rm, rv = _sim_inputs(rng, 16, 9, "float32")
    dy = rng.standard_normal(x.shape).astype(np.float32)
    results = []
    for bx, by in [(32, 8), (4, 2), (1, 1), (9, 3)]:
        ck.config.bn_block_features, ck.config.bn_block_slices = bx, by
        ck.config.block = 8 if bx < 32 else 256
        rm_run, rv_run = rm.copy(), rv.copy()
        scratch = np.empty((2, 4, 9), np.float32)
        y, mean, invstd = _sim_train(ck, x, gamma, beta, rm_run, rv_run, False, scratch=scratch)
        dx, dg, db = _sim_backward(ck, dy, x, gamma, beta, mean, invstd, False, scratch=scratch)
        results.append([a.copy() for a in (y, mean, invstd, rm_run, rv_run, dx, dg, db)])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)  # bitwise


@CUDASIM
class TestLauncherChecks:
    def test_training_needs_two_rows(self, ck):
        x = np.zeros((1, 3), np.float32)
        v = np.zeros(3, np.float32)
        with pytest.raises(ValueError, match="at least 2 rows"):
            ck.batchnorm_forward_train(x, v, v, v, v, SIM_EPS, SIM_MOMENTUM, out=x, mean=v, invstd=v,
                                       scratch=np.zeros((2, 1, 3), np.float32))

    def test_bad_scratch(self, ck):
        x = np.zeros((4, 3), np.float32)
        v = np.zeros(3, np.float32)
        with pytest.raises(ValueError, match="scratch"):
            ck.batchnorm_forward_train(x, v, v, v, v, SIM_EPS, SIM_MOMENTUM, out=x, mean=v,
                                       invstd=v, scratch=np.zeros((2, 1, 4), np.float32))

    def test_vector_dtype_and_shape(self, ck):
        x = np.zeros((4, 3), np.float32)
        v = np.zeros(3, np.float32)
        with pytest.raises(TypeError, match="gamma"):
            ck.batchnorm_forward_eval(x, v.astype(np.float64), v, v, v, SIM_EPS, out=x)
        with pytest.raises(ValueError, match="beta"):
            ck.batchnorm_forward_eval(x, v, np.zeros(4, np.float32), v, v, SIM_EPS, out=x)


# ------------------------------------------------------------ CUDA simulator: float16 x/y/dy/dx
# gamma, beta, statistics, running statistics and scratch stay float32; every sum is float32.

HALF_BN_TOL = {"rtol": 2.0 ** -10, "atol": 2e-5}
"""One float16 ulp relative; 2e-5 absolute (the float32 tolerance above) for outputs near
zero, where float32 differences in the statistics exceed a float16 ulp of the output."""


def _half_inputs(rng, n, c):
    x, gamma, beta, rm, rv = _sim_inputs(rng, n, c, "float32")
    return x.astype(np.float16), gamma, beta, rm, rv


@CUDASIM
@pytest.mark.parametrize("shape", [(2, 1), (16, 9), (33, 3)])
@pytest.mark.parametrize("relu", [False, True])
def test_cudasim_float16_matches_float32_reference(ck, rng, shape, relu):
    n, c = shape
    x, gamma, beta, rm, rv = _half_inputs(rng, n, c)
    x32 = x.astype(np.float32)
    y_ref, mean_ref, invstd_ref, rm_ref, rv_ref = reference.batchnorm_forward_train(
        np, x32, gamma, beta, rm.copy(), rv.copy(), SIM_EPS, SIM_MOMENTUM, relu)
    scratch = np.empty(ck.batchnorm_scratch_shape(n, c), np.float32)
    mean, invstd = np.empty(c, np.float32), np.empty(c, np.float32)
    y = np.full_like(x, 7.0)
    ck.batchnorm_forward_train(x, gamma, beta, rm, rv, SIM_EPS, SIM_MOMENTUM, relu, out=y,
                               mean=mean, invstd=invstd, scratch=scratch)
    tol = _sim_bn_tol("float32")
    for got, ref in ((mean, mean_ref), (invstd, invstd_ref), (rm, rm_ref), (rv, rv_ref)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref, **tol)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float32),
                               y_ref.astype(np.float16).astype(np.float32), **HALF_BN_TOL)

    y_eval = ck.batchnorm_forward_eval(x, gamma, beta, rm, rv, SIM_EPS, relu,
                                       out=np.full_like(x, 7.0))
    eval_ref = reference.batchnorm_forward_eval(np, x32, gamma, beta, rm, rv, SIM_EPS, relu)
    np.testing.assert_allclose(y_eval.astype(np.float32),
                               eval_ref.astype(np.float16).astype(np.float32), **HALF_BN_TOL)

    dy = rng.standard_normal(shape).astype(np.float16)
    dx_ref, dgamma_ref, dbeta_ref = reference.batchnorm_backward(
        np, dy.astype(np.float32), x32, gamma, beta, mean, invstd, relu)
    dgamma, dbeta = np.empty(c, np.float32), np.empty(c, np.float32)
    dx = np.full_like(x, 7.0)
    ck.batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu, out=dx, dgamma=dgamma,
                          dbeta=dbeta, scratch=scratch)
    np.testing.assert_allclose(dgamma, dgamma_ref, **tol)
    np.testing.assert_allclose(dbeta, dbeta_ref, **tol)
    assert dx.dtype == np.float16
    np.testing.assert_allclose(dx.astype(np.float32),
                               dx_ref.astype(np.float16).astype(np.float32), **HALF_BN_TOL)


@CUDASIM
def test_cudasim_float16_statistics_must_be_float32(ck, rng):
    x, gamma, beta, rm, rv = _half_inputs(rng, 4, 3)
    scratch = np.empty(ck.batchnorm_scratch_shape(4, 3), np.float32)
    with pytest.raises(TypeError, match="float32"):
        ck.batchnorm_forward_train(x, gamma.astype(np.float16), beta, rm, rv, SIM_EPS,
                                   SIM_MOMENTUM, out=np.empty_like(x),
                                   mean=np.empty(3, np.float32),
                                   invstd=np.empty(3, np.float32), scratch=scratch)


@CUDASIM
def test_cudasim_backend_batchnorm_float16_with_float32_statistics(rng):
    from tests.support.cudasim_backend import CudaSimBackend

    backend = CudaSimBackend()
    x, gamma, beta, rm, rv = _half_inputs(rng, 8, 3)
    y, mean, invstd = backend.batchnorm_forward_train(x, gamma, beta, rm, rv, SIM_EPS,
                                                      SIM_MOMENTUM)
    assert y.dtype == np.float16 and mean.dtype == np.float32 and invstd.dtype == np.float32
    ref = reference.batchnorm_forward_train(np, x.astype(np.float32), gamma, beta,
                                            np.zeros(3, np.float32), np.ones(3, np.float32),
                                            SIM_EPS, SIM_MOMENTUM)
    np.testing.assert_allclose(mean, ref[1], **_sim_bn_tol("float32"))
    dy = rng.standard_normal((8, 3)).astype(np.float16)
    dx, dgamma, dbeta = backend.batchnorm_backward(dy, x, gamma, beta, mean, invstd)
    assert dx.dtype == np.float16 and dgamma.dtype == np.float32
    np.testing.assert_allclose(dbeta, dy.astype(np.float32).sum(0), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------ CUDA simulator: bfloat16 x/y/dy/dx
# Stored as uint16 bit patterns (the top half of a float32); gamma, beta, statistics and
# scratch stay float32. Expected: the float32 reference on the widened inputs, rounded to
# bfloat16 by the cast reference (round to nearest even).

BF16_BN_TOL = {"rtol": 2.0 ** -7, "atol": 2e-5}
"""One bfloat16 ulp relative (8-bit significand); 2e-5 absolute (the float32 tolerance)
for outputs near zero, where float32 differences in the statistics can move the rounding
of a tiny output by one bfloat16 ulp of it."""


def _to_bf16_bits(x):
    from dualnn.kernels.cast import reference as cast_reference

    rounded = cast_reference.round_bfloat16(np, np.asarray(x, np.float32))
    return (rounded.view(np.uint32) >> 16).astype(np.uint16)


def _from_bf16_bits(bits):
    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)


def _bf16_inputs(rng, n, c):
    x, gamma, beta, rm, rv = _sim_inputs(rng, n, c, "float32")
    return _to_bf16_bits(x), gamma, beta, rm, rv


def _assert_bf16(got_bits, want32):
    assert got_bits.dtype == np.uint16
    np.testing.assert_allclose(_from_bf16_bits(got_bits),
                               _from_bf16_bits(_to_bf16_bits(want32)), **BF16_BN_TOL)


@CUDASIM
@pytest.mark.parametrize("shape", [(2, 1), (16, 9), (33, 3)])
@pytest.mark.parametrize("relu", [False, True])
def test_cudasim_bfloat16_matches_float32_reference_rounded(ck, rng, shape, relu):
    n, c = shape
    x, gamma, beta, rm, rv = _bf16_inputs(rng, n, c)
    x32 = _from_bf16_bits(x)
    y_ref, mean_ref, invstd_ref, rm_ref, rv_ref = reference.batchnorm_forward_train(
        np, x32, gamma, beta, rm.copy(), rv.copy(), SIM_EPS, SIM_MOMENTUM, relu)
    scratch = np.empty(ck.batchnorm_scratch_shape(n, c), np.float32)
    mean, invstd = np.empty(c, np.float32), np.empty(c, np.float32)
    y = np.full_like(x, 7)
    ck.batchnorm_forward_train(x, gamma, beta, rm, rv, SIM_EPS, SIM_MOMENTUM, relu, out=y,
                               mean=mean, invstd=invstd, scratch=scratch)
    tol = _sim_bn_tol("float32")
    for got, ref in ((mean, mean_ref), (invstd, invstd_ref), (rm, rm_ref), (rv, rv_ref)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref, **tol)
    _assert_bf16(y, y_ref)

    y_eval = ck.batchnorm_forward_eval(x, gamma, beta, rm, rv, SIM_EPS, relu,
                                       out=np.full_like(x, 7))
    _assert_bf16(y_eval, reference.batchnorm_forward_eval(np, x32, gamma, beta, rm, rv,
                                                          SIM_EPS, relu))

    dy = _to_bf16_bits(rng.standard_normal(shape))
    dx_ref, dgamma_ref, dbeta_ref = reference.batchnorm_backward(
        np, _from_bf16_bits(dy), x32, gamma, beta, mean, invstd, relu)
    dgamma, dbeta = np.empty(c, np.float32), np.empty(c, np.float32)
    dx = np.full_like(x, 7)
    ck.batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu, out=dx, dgamma=dgamma,
                          dbeta=dbeta, scratch=scratch)
    np.testing.assert_allclose(dgamma, dgamma_ref, **tol)
    np.testing.assert_allclose(dbeta, dbeta_ref, **tol)
    _assert_bf16(dx, dx_ref)


@CUDASIM
def test_cudasim_bfloat16_eval_rounds_to_nearest_even_and_keeps_nan(ck):
    # gamma = 1, beta = 0, mean 0, var 1 - eps: y = x * (1 + tiny), so the store rounds a
    # value a hair above x; NaN stays NaN, inf stays inf
    x32 = np.array([[1.0, np.nan, np.inf, -2.5]], np.float32)
    x = _to_bf16_bits(x32)
    c = x.shape[1]
    gamma, beta, rm = np.ones(c, np.float32), np.zeros(c, np.float32), np.zeros(c, np.float32)
    rv = np.full(c, 1 - SIM_EPS, np.float32)
    y = ck.batchnorm_forward_eval(x, gamma, beta, rm, rv, SIM_EPS, out=np.zeros_like(x))
    got = _from_bf16_bits(y)
    assert got[0, 0] == 1.0 and got[0, 3] == -2.5
    assert np.isnan(got[0, 1]) and got[0, 2] == np.inf
    # scale exactly gamma (var 1, eps 0): y = gamma, exactly halfway between two bfloat16
    # values; ties go to the even significand (down from 1 + 2**-8, up from 1 + 3 * 2**-8)
    halfway = np.array([1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8], np.float32)
    y = ck.batchnorm_forward_eval(_to_bf16_bits(np.ones((1, 2), np.float32)), halfway,
                                  np.zeros(2, np.float32), np.zeros(2, np.float32),
                                  np.ones(2, np.float32), 0.0, out=np.zeros((1, 2), np.uint16))
    assert _from_bf16_bits(y)[0].tolist() == [1.0, 1.0 + 2.0 ** -6]


@CUDASIM
def test_cudasim_backend_batchnorm_bfloat16_with_float32_statistics(rng):
    from tests.support.cudasim_backend import CudaSimBackend

    backend = CudaSimBackend()
    x, gamma, beta, rm, rv = _bf16_inputs(rng, 8, 3)
    y, mean, invstd = backend.batchnorm_forward_train(x, gamma, beta, rm, rv, SIM_EPS,
                                                      SIM_MOMENTUM)
    assert y.dtype == np.uint16 and mean.dtype == np.float32 and invstd.dtype == np.float32
    ref = reference.batchnorm_forward_train(np, _from_bf16_bits(x), gamma, beta,
                                            np.zeros(3, np.float32), np.ones(3, np.float32),
                                            SIM_EPS, SIM_MOMENTUM)
    np.testing.assert_allclose(mean, ref[1], **_sim_bn_tol("float32"))
    _assert_bf16(y, ref[0])
    dy = _to_bf16_bits(rng.standard_normal((8, 3)))
    dx, dgamma, dbeta = backend.batchnorm_backward(dy, x, gamma, beta, mean, invstd)
    assert dx.dtype == np.uint16 and dgamma.dtype == np.float32
    np.testing.assert_allclose(dbeta, _from_bf16_bits(dy).sum(0), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------ bfloat16 rounding on load

def _with_edges(x):
    """``x`` with bfloat16 rounding's edge values in its first row: ties (even and odd
    kept bit), the largest value that still rounds to a finite one, NaN, inf."""
    edges = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 3.3895313e38, np.nan, np.inf,
                      -np.inf, 2**-130], np.float32)
    x = x.copy()
    k = min(x.shape[1], edges.size)
    x[0, :k] = edges[:k]
    return x


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", BN_SHAPES + [(512, 96)])
@pytest.mark.parametrize("edges", [False, True])
def test_rounding_on_load_is_bit_identical_to_rounding_first(shape, relu, edges):
    """round_input / round_x / round_dy: the kernels on unrounded float32 give exactly what
    they give on the bfloat16-rounded arrays, and the reference twins agree."""
    from dualnn.kernels.batchnorm import cpu as bn
    from dualnn.kernels.cast.reference import round_bfloat16

    rng = np.random.default_rng(11)
    x, gamma, beta, rm, rv = bn_inputs(rng, shape, np.float32)
    x = _with_edges(x) if edges else x
    dy = rand(rng, shape, np.float32, 3.0)
    xr, dyr = round_bfloat16(np, x), round_bfloat16(np, dy)
    assert not np.array_equal(x, xr, equal_nan=True)
    c = shape[1]
    runs = []
    for xin, dyin, flag in ((xr, dyr, False), (x, dy, True)):
        rm2, rv2 = rm.copy(), rv.copy()
        y, mean, invstd = bn.batchnorm_forward_train(
            xin, gamma, beta, rm2, rv2, 1e-5, 0.1, relu, out=np.empty_like(x),
            mean=np.empty(c, np.float32), invstd=np.empty(c, np.float32), round_input=flag)
        dx, dg, db = bn.batchnorm_backward(
            dyin, xin, gamma, beta, mean, invstd, relu, out=np.empty_like(x),
            dgamma=np.empty(c, np.float32), dbeta=np.empty(c, np.float32), round_x=flag,
            round_dy=flag)
        runs.append([y, mean, invstd, rm2, rv2, dx, dg, db])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    if not edges:  # the twins, on finite data
        want = R.batchnorm_forward_train(np, x, gamma, beta, rm, rv, 1e-5, 0.1, relu,
                                         round_input=True)
        for got, exp in zip(runs[1][:5], want[:1] + want[1:3] + want[3:]):
            assert_close(got, exp, np.float32)
        got_dx = R.batchnorm_backward(np, dy, x, gamma, beta, runs[1][1], runs[1][2], relu,
                                      round_x=True, round_dy=True)
        assert_close(runs[1][5], got_dx[0], np.float32,
                     scale=float(np.abs(got_dx[0]).max()) * 10)


def test_rounding_on_load_needs_float32():
    from dualnn.kernels.batchnorm import cpu as bn

    x = np.ones((4, 3))
    c = np.ones(3)
    with pytest.raises(ValueError, match="round_input.*float32.*float64"):
        bn.batchnorm_forward_train(x, c, c, c.copy(), c.copy(), 1e-5, 0.1, out=x.copy(),
                                   mean=c.copy(), invstd=c.copy(), round_input=True)
    with pytest.raises(ValueError, match="round_x/round_dy"):
        bn.batchnorm_backward(x, x, c, c, c, c, out=x.copy(), dgamma=c.copy(),
                              dbeta=c.copy(), round_dy=True)
