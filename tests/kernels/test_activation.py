"""Activation kernels (forward, bias + activation, backward): reference, CPU and
CUDA-simulator twins from one set of cases, then device-specific checks (SIMD passes,
in-place aliasing, fallbacks, simulator grid-stride loops).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from dualnn.kernels import cpu, reference
from dualnn.kernels import reference as R
from hypothesis import given, settings
from hypothesis import strategies as st

from .cases import (
    CUDASIM,
    DEVICES,
    DTYPE_NAMES,
    EDGE_VALUES,
    device_kernels,
    edge_matrix,
    tolerances,
)
from .cases import SHAPES as CASE_SHAPES
from .cpu_cases import (
    DTYPES,
    EDGE,
    FUSED,
    KINDS,
    PROFILE,
    SHAPES,
    assert_close,
    rand,
    saved_for,
)

# ------------------------------------------------------------ every device, one set of cases

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("kind", R.ACTIVATIONS)
@pytest.mark.parametrize("shape", CASE_SHAPES)
def test_activation_twins_agree_on_every_device(device, shape, kind, dtype):
    k = device_kernels(device)
    rng = np.random.default_rng(len(kind) * 31 + shape[0])
    alpha = 0.1
    z = edge_matrix(rng, shape, dtype)
    b = edge_matrix(rng, shape[1:], dtype, 1.0)[::-1].copy()
    dy = rng.standard_normal(shape).astype(dtype)
    rtol, atol = tolerances(dtype)
    with np.errstate(all="ignore"):
        saved = np.ascontiguousarray(R.activation_forward(np, kind, z, alpha)
                                     if kind in R.BACKWARD_FROM_OUTPUT else z, dtype=dtype)
        expected = (R.activation_forward(np, kind, z, alpha),
                    R.bias_activation_forward(np, z, b, kind, alpha),
                    R.activation_backward(np, kind, dy, saved, alpha))
        got = (k.activation_forward(kind, z, alpha, out=np.full_like(z, 7.0)),
               k.bias_activation_forward(z, b, kind, alpha, out=np.full_like(z, 7.0)),
               k.activation_backward(kind, dy, saved, alpha, out=np.full_like(z, 7.0)))
    for g, e in zip(got, expected):
        assert g.dtype == np.dtype(dtype) and g.shape == shape
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("kind", R.ACTIVATIONS)
def test_read_only_inputs_take_the_fused_path(kind):
    rng = np.random.default_rng(3)
    z = rng.standard_normal((9, 5))
    b = rng.standard_normal(5)
    for a in (z, b):
        a.setflags(write=False)
    expected = R.bias_activation_forward(np, z, b, kind, 0.2)
    np.testing.assert_allclose(cpu.bias_activation_forward(z, b, kind, 0.2,
                                                           out=np.empty_like(z)), expected)
    np.testing.assert_allclose(FUSED.activation_forward(kind, z, 0.2),
                               R.activation_forward(np, kind, z, 0.2))
    np.testing.assert_allclose(FUSED.activation_backward(kind, z, z, 0.2),
                               R.activation_backward(np, kind, z, z, 0.2))


# ------------------------------------------------------------ CPU only: larger shapes, fallbacks, in place

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_activation_forward_backward_match_reference(shape, kind, dtype):
    rng = np.random.default_rng(hash((shape, kind)) % 2**32)
    z = rand(rng, shape, dtype, 3.0)
    b = rand(rng, shape[1], dtype)
    dy = rand(rng, shape, dtype)
    alpha = 0.1

    out = cpu.activation_forward(kind, z, alpha, out=np.empty_like(z))
    assert_close(out, R.activation_forward(np, kind, z, alpha), dtype)
    out = cpu.bias_activation_forward(z, b, kind, alpha, out=np.empty_like(z))
    assert_close(out, R.bias_activation_forward(np, z, b, kind, alpha), dtype)
    saved = saved_for(kind, z)
    out = cpu.activation_backward(kind, dy, saved, alpha, out=np.empty_like(z))
    assert_close(out, R.activation_backward(np, kind, dy, saved, alpha), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_activation_edge_values(kind, dtype):
    z = np.array(EDGE, dtype=dtype)
    with np.errstate(all="ignore"):
        expected = R.activation_forward(np, kind, z, 0.5)
    got = cpu.activation_forward(kind, z, 0.5, out=np.empty_like(z))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert_close(got, expected, dtype, scale=1.0)
    dy = np.linspace(-2, 2, z.size).astype(dtype)
    dy[3] = np.inf
    saved = z if kind not in ("sigmoid", "tanh") else np.clip(got, -1, 1).astype(dtype)
    with np.errstate(all="ignore"):
        expected = R.activation_backward(np, kind, dy, saved, 0.5)
    got = cpu.activation_backward(kind, dy, saved, 0.5, out=np.empty_like(z))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert_close(got, expected, dtype, scale=1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_tanh_elu_do_not_overflow(dtype):
    z = np.array([1e4, -1e4, 3e38, -3e38, np.inf, -np.inf], dtype=dtype)
    sig = cpu.activation_forward("sigmoid", z, 0.0, out=np.empty_like(z))
    np.testing.assert_array_equal(sig, np.array([1, 0, 1, 0, 1, 0], dtype=dtype))
    th = cpu.activation_forward("tanh", z, 0.0, out=np.empty_like(z))
    np.testing.assert_array_equal(th, np.array([1, -1, 1, -1, 1, -1], dtype=dtype))
    elu = cpu.activation_forward("elu", z, 1.0, out=np.empty_like(z))
    np.testing.assert_array_equal(elu, np.array([1e4, -1, 3e38, -1, np.inf, -1], dtype=dtype))
    dy = np.ones_like(z)
    delu = cpu.activation_backward("elu", dy, z, 1.0, out=np.empty_like(z))
    np.testing.assert_array_equal(delu, np.array([1, 0, 1, 0, 1, 0], dtype=dtype))


@pytest.mark.parametrize("kind", ["relu", "leaky_relu", "elu"])
def test_kink_derivatives_follow_pytorch(kind):
    z = np.zeros(3)
    got = cpu.activation_backward(kind, np.ones(3), z, 0.25, out=np.empty(3))
    expected = {"relu": 0.0, "leaky_relu": 0.25, "elu": 0.25}[kind]
    np.testing.assert_array_equal(got, expected)


@settings(PROFILE)
@given(data=st.data(), kind=st.sampled_from(KINDS), dtype=st.sampled_from(DTYPES),
       n=st.integers(1, 40), c=st.integers(1, 40))
def test_activations_hypothesis(data, kind, dtype, n, c):
    values = st.floats(-1e4, 1e4, allow_nan=False, width=32)
    z = np.array(data.draw(st.lists(values, min_size=n * c, max_size=n * c)),
                 dtype=dtype).reshape(n, c)
    b = np.array(data.draw(st.lists(values, min_size=c, max_size=c)), dtype=dtype)
    with np.errstate(all="ignore"):
        expected = R.bias_activation_forward(np, z, b, kind, 0.3)
        z_before = z.copy()
        got = FUSED.bias_activation_forward(z, b, kind, 0.3)
    assert_close(got, expected, dtype, scale=1.0)
    np.testing.assert_array_equal(z, z_before)  # out of place: the input is untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_activation_in_place_aliasing(kind, dtype):
    rng = np.random.default_rng(1)
    z = rand(rng, (33, 65), dtype)
    b = rand(rng, 65, dtype)
    dy = rand(rng, (33, 65), dtype)
    saved = saved_for(kind, z)
    expected = R.activation_backward(np, kind, dy, saved, 0.2)
    buf = dy.copy()
    assert FUSED.activation_backward(kind, buf, saved, 0.2, out=buf) is buf
    assert_close(buf, expected, dtype)
    expected = R.bias_activation_forward(np, z, b, kind, 0.2)
    zz = z.copy()
    assert FUSED.bias_activation_forward(zz, b, kind, 0.2, out=zz) is zz
    assert_close(zz, expected, dtype)


@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous_and_other_dtypes_fall_back(kind):
    rng = np.random.default_rng(2)
    base = rand(rng, (16, 30), np.float64)
    views = [base[:, ::2], base.T, np.asfortranarray(base), base.astype(np.float16)]
    for z in views:
        expected = R.activation_forward(np, kind, z, 0.1)
        got = FUSED.activation_forward(kind, z, 0.1)
        np.testing.assert_allclose(got, expected, rtol=1e-3 if z.dtype == np.float16 else 1e-12)
        saved = saved_for(kind, z)
        dy = np.ones_like(z)
        got = FUSED.activation_backward(kind, dy, saved, 0.1, out=np.empty_like(z))
        np.testing.assert_allclose(got, R.activation_backward(np, kind, dy, saved, 0.1),
                                   rtol=1e-3 if z.dtype == np.float16 else 1e-12)
    # mixed dtypes fall back too
    z32 = base.astype(np.float32)
    b64 = np.ones(30)
    got = FUSED.bias_activation_forward(z32, b64, kind, 0.1)
    np.testing.assert_allclose(got, R.bias_activation_forward(np, z32, b64, kind, 0.1),
                               rtol=1e-6)


def test_kernel_api_rejects_bad_arrays():
    x = np.ones((4, 6), np.float32)
    with pytest.raises(ValueError):
        cpu.activation_backward("relu", x, x[:, ::2], 0.0, out=np.empty_like(x))
    with pytest.raises(ValueError):
        cpu.activation_backward("relu", x, x.astype(np.float64), 0.0, out=np.empty_like(x))
    with pytest.raises(ValueError):
        cpu.bias_activation_forward(x, np.ones(5, np.float32), "relu", 0.0, out=np.empty_like(x))
    with pytest.raises(ValueError):
        cpu.activation_forward("swish", x, 0.0, out=np.empty_like(x))
    with pytest.raises(ValueError):
        cpu.activation_forward("relu", x.astype(np.int32), 0.0, out=np.empty((4, 6), np.int32))


EDGES = [0.0, -0.0, 1e-30, -1e-30, 0.5, -0.5, 10.0, -10.0, 17.5, -17.5, 40.0, -40.0, 79.0,
         80.0, 81.0, 88.5, 89.0, -87.0, -100.0, -103.0, -110.0, 699.0, 700.0, 701.0, 709.0,
         710.0, -745.0, 1e4, -1e4, 1e30, -1e30, np.inf, -np.inf, np.nan]


def truth(kind, v):
    v = np.asarray(v, dtype=np.longdouble)
    with np.errstate(over="ignore", invalid="ignore"):
        if kind == "tanh":
            return np.tanh(v)
        return np.where(v >= 0, 1 / (1 + np.exp(-v)), np.exp(v) / (1 + np.exp(v)))


def assert_accurate(got, kind, v, dtype):
    """Within 4 ulps of the truth rounded to ``dtype``; subnormals within 2 of the smallest."""
    v = np.asarray(v).reshape(-1)
    got = np.asarray(got).reshape(-1)
    want = truth(kind, v).astype(dtype)
    info = np.finfo(dtype)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    diff = np.abs(got[ok].astype(np.longdouble) - want[ok].astype(np.longdouble))
    allowed = np.maximum(4 * info.eps * np.abs(want[ok]).astype(np.longdouble),
                         2 * info.smallest_subnormal)
    if diff.size:
        worst = np.argmax(diff - allowed)
        assert (diff <= allowed).all(), (v[ok][worst], got[ok][worst], want[ok][worst])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_edge_values_are_accurate_and_match_reference(kind, dtype):
    with np.errstate(over="ignore"):
        z = np.array(EDGES, dtype=dtype)
    got = cpu.activation_forward(kind, z, 0.0, out=np.empty_like(z))
    assert_accurate(got, kind, z, dtype)
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(got, R.activation_forward(np, kind, z), rtol=1e-6,
                                   atol=0, equal_nan=True)
    assert got[EDGES.index(np.inf)] == 1.0 and got[EDGES.index(1e4)] == 1.0
    assert got[EDGES.index(-np.inf)] == (0.0 if kind == "sigmoid" else -1.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
@pytest.mark.parametrize("rows", [1, 7, 300])
def test_bias_forward_in_and_out_of_place(kind, dtype, rows):
    rng = np.random.default_rng(rows)
    z = (rng.standard_normal((rows, 33)) * 30).astype(dtype)
    b = (rng.standard_normal(33) * 30).astype(dtype)
    v = z.astype(np.longdouble) + b  # the rounded z + b is what the kernel sees
    v = v.astype(dtype)
    z_before = z.copy()
    out = cpu.bias_activation_forward(z, b, kind, 0.0, out=np.empty_like(z))
    np.testing.assert_array_equal(z, z_before)
    assert_accurate(out, kind, v, dtype)
    assert cpu.bias_activation_forward(z, b, kind, 0.0, out=z) is z
    np.testing.assert_array_equal(z, out)


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
@pytest.mark.parametrize("shape", [(0,), (0, 5), (5,), (2, 3, 4)])
def test_any_shape_through_the_backend(kind, shape):
    z = np.linspace(-50, 50, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    got = FUSED.activation_forward(kind, z)
    assert got.shape == shape
    assert_accurate(got.reshape(-1), kind, z.reshape(-1), np.float32)


@pytest.mark.parametrize("kind", ["sigmoid", "tanh"])
def test_large_arrays_split_across_threads_match_one_call(kind):
    n = cpu.FORWARD_PARALLEL_THRESHOLD + 12345  # above the threshold, not a multiple of 2
    rng = np.random.default_rng(3)
    z = (rng.standard_normal(n) * 20).astype(np.float32)
    z[[0, n // 2, n - 1]] = [np.nan, np.inf, -np.inf]
    got = cpu.activation_forward(kind, z, 0.0, out=np.empty_like(z))
    assert_accurate(got, kind, z, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        whole = np.exp(z) if kind == "sigmoid" else np.tanh(z)
        if kind == "sigmoid":
            whole = np.where(whole == np.inf, 1, whole / (1 + whole)).astype(np.float32)
    np.testing.assert_array_equal(got, whole)  # the split changes nothing, bit for bit


def test_split_ufunc_covers_every_element_once():
    a = np.arange(cpu.FORWARD_PARALLEL_THRESHOLD + 3, dtype=np.float64)
    cpu.split_ufunc(np.negative, a)
    np.testing.assert_array_equal(a, -np.arange(a.size, dtype=np.float64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alpha", [1.0, 0.3])
@pytest.mark.parametrize("size", [len(EDGES), cpu.FORWARD_PARALLEL_THRESHOLD + 7])
def test_elu_forward_matches_expm1_truth_in_and_out_of_place(size, alpha, dtype):
    rng = np.random.default_rng(size)
    with np.errstate(over="ignore"):
        z = np.resize(np.array(EDGES, dtype=dtype), size)
    z[len(EDGES):] = rng.standard_normal(size - len(EDGES)) * 5
    v = z.astype(np.longdouble)
    with np.errstate(over="ignore", invalid="ignore"):
        want = np.where(v > 0, v, alpha * np.expm1(np.minimum(v, 0))).astype(dtype)
    got = cpu.activation_forward("elu", z, alpha, out=np.empty_like(z))
    np.testing.assert_allclose(got, want, rtol=4 * np.finfo(dtype).eps, atol=0,
                               equal_nan=True)
    in_place = z.copy()  # in place runs the scalar Numba loop: same values
    cpu.activation_forward("elu", in_place, alpha, out=in_place)
    np.testing.assert_allclose(in_place, got, rtol=4 * np.finfo(dtype).eps, atol=0,
                               equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [len(EDGES), cpu.BACKWARD_PARALLEL_THRESHOLD + 5])
def test_elu_backward_matches_exp_truth_in_and_out_of_place(size, dtype):
    rng = np.random.default_rng(size + 1)
    with np.errstate(over="ignore"):
        z = np.resize(np.array(EDGES, dtype=dtype), size)
    z[len(EDGES):] = rng.standard_normal(size - len(EDGES)) * 5
    dy = rng.standard_normal(size).astype(dtype)
    v = z.astype(np.longdouble)
    with np.errstate(over="ignore", invalid="ignore"):
        want = np.where(v > 0, dy, dy * (0.7 * np.exp(np.minimum(v, 0)))).astype(dtype)
    got = cpu.activation_backward("elu", dy, z, 0.7, out=np.empty_like(dy))
    np.testing.assert_allclose(got, want, rtol=4 * np.finfo(dtype).eps,
                               atol=4 * np.finfo(dtype).smallest_subnormal, equal_nan=True)
    buf = dy.copy()
    assert cpu.activation_backward("elu", buf, z, 0.7, out=buf) is buf
    np.testing.assert_array_equal(buf, got)
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(got, R.activation_backward(np, "elu", dy, z, 0.7),
                                   rtol=1e-6, equal_nan=True)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_split_ufunc_works_in_a_forked_child():
    a = np.ones(cpu.FORWARD_PARALLEL_THRESHOLD, np.float32)
    cpu.split_ufunc(np.negative, a)  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # child: a pool inherited without its threads would hang here
        try:
            b = np.ones(cpu.FORWARD_PARALLEL_THRESHOLD, np.float32)
            cpu.split_ufunc(np.negative, b)
            os._exit(0 if (b == -1).all() else 1)
        except BaseException:
            os._exit(2)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            pytest.fail("split_ufunc hung in a forked child")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0


# ------------------------------------------------------------ CUDA simulator: launch geometry, launcher checks


SIM_KINDS = reference.ACTIVATIONS


SIM_ALPHA = {"leaky_relu": 0.01, "elu": 1.0}


def _sim_edge_matrix(dtype, rng, shape=(5, 7)):
    """A (5, 7) matrix whose first entries are the edge values, the rest random."""
    values = rng.standard_normal(shape[0] * shape[1]) * 3
    values[:len(EDGE_VALUES)] = EDGE_VALUES
    return values.reshape(shape).astype(dtype)


@CUDASIM
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("kind", SIM_KINDS)
def test_cudasim_activation_backward_matches_reference(ck, rng, kind, dtype):
    alpha = SIM_ALPHA.get(kind, 0.0)
    z = _sim_edge_matrix(dtype, rng)
    dy = _sim_edge_matrix(dtype, rng)[::-1].copy()
    saved = (reference.activation_forward(np, kind, z, alpha)
             if kind in reference.BACKWARD_FROM_OUTPUT else z)
    saved = np.ascontiguousarray(saved, dtype=dtype)
    expected = reference.activation_backward(np, kind, dy, saved, alpha)
    out = np.full_like(dy, 7.0)
    result = ck.activation_backward(kind, dy, saved, alpha, out=out)
    assert result is out
    np.testing.assert_allclose(out, expected, *tolerances(dtype))


@CUDASIM
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("kind", ["relu", "elu", "sigmoid"])
def test_cudasim_activation_backward_in_place_and_grid_stride(tiny_grid, rng, kind, dtype):
    ck = tiny_grid
    alpha = SIM_ALPHA.get(kind, 0.0)
    z = rng.standard_normal((5, 7)).astype(dtype)
    saved = np.ascontiguousarray(reference.activation_forward(np, kind, z, alpha)
                                 if kind == "sigmoid" else z)
    dy = rng.standard_normal((5, 7)).astype(dtype)
    expected = reference.activation_backward(np, kind, dy, saved, alpha)
    ck.activation_backward(kind, dy, saved, alpha, out=dy)  # 8 threads, 35 elements
    np.testing.assert_allclose(dy, expected, *tolerances(dtype))


@CUDASIM
def test_cudasim_kink_derivatives_follow_pytorch(ck):
    z = np.zeros((1, 1), np.float32)
    dy = np.ones((1, 1), np.float32)
    out = np.empty_like(dy)
    assert ck.activation_backward("relu", dy, z, out=out)[0, 0] == 0
    assert ck.activation_backward("leaky_relu", dy, z, 0.1, out=out)[0, 0] == np.float32(0.1)
    assert ck.activation_backward("elu", dy, z, 0.7, out=out)[0, 0] == np.float32(0.7)


@CUDASIM
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("kind", SIM_KINDS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_cudasim_bias_activation_forward_matches_reference(ck, rng, kind, dtype, with_bias):
    alpha = SIM_ALPHA.get(kind, 0.0)
    z = _sim_edge_matrix(dtype, rng)
    b = rng.standard_normal(7).astype(dtype) if with_bias else None
    expected = reference.bias_activation_forward(np, z, b, kind, alpha)
    out = np.empty_like(z)
    assert ck.bias_activation_forward(z, b, kind, alpha, out=out) is out
    np.testing.assert_allclose(out, expected, *tolerances(dtype))


@CUDASIM
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_cudasim_bias_activation_forward_in_place_large_magnitudes(tiny_grid, dtype):
    """sigmoid/tanh/ELU of |z| ~ 1e4 saturate without overflow; out aliases z."""
    ck = tiny_grid
    z = np.array([[1e4, -1e4, 3e4], [-3e4, 0.0, 20.0]], dtype)
    b = np.array([0.0, 1.0, -1.0], dtype)
    for kind in ("sigmoid", "tanh", "elu"):
        work = z.copy()
        expected = reference.bias_activation_forward(np, z, b, kind, 1.0)
        ck.bias_activation_forward(work, b, kind, 1.0, out=work)
        np.testing.assert_allclose(work, expected, *tolerances(dtype))
        assert np.isfinite(work).all()


@CUDASIM
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (16, 9)])
def test_cudasim_activation_forward_any_shape(ck, rng, shape):
    z = rng.standard_normal(shape).astype(np.float32)
    out = np.empty_like(z)
    ck.activation_forward("tanh", z, out=out)
    np.testing.assert_allclose(out, np.tanh(z), 2e-6, 1e-7)


@CUDASIM
def test_cudasim_empty_input_launches_nothing(ck):
    z = np.empty((0, 4), np.float32)
    out = np.empty_like(z)
    assert ck.bias_activation_forward(z, np.zeros(4, np.float32), "relu", out=out) is out
    assert ck.activation_backward("relu", z, z, out=out) is out


@CUDASIM
class TestLauncherChecks:
    """A compiled kernel does not type-check: the launcher must refuse bad arguments."""

    def test_dtype_mismatch(self, ck):
        a = np.zeros((2, 3), np.float32)
        with pytest.raises(TypeError, match="dtype"):
            ck.activation_backward("relu", a, a.astype(np.float64), out=a)

    def test_integer_dtype(self, ck):
        a = np.zeros((2, 3), np.int64)
        with pytest.raises(TypeError, match="no kernel"):
            ck.activation_backward("relu", a, a, out=a)

    def test_not_contiguous(self, ck):
        a = np.zeros((3, 2), np.float32, order="F")
        with pytest.raises(ValueError, match="C-contiguous"):
            ck.activation_backward("relu", a, a, out=a)

    def test_shape_mismatch(self, ck):
        a = np.zeros((2, 3), np.float32)
        with pytest.raises(ValueError, match="shape"):
            ck.activation_backward("relu", a, np.zeros((3, 2), np.float32), out=a)
        with pytest.raises(ValueError, match="shape"):
            ck.bias_activation_forward(a, np.zeros(2, np.float32), "relu", out=a)

    def test_unknown_kind(self, ck):
        a = np.zeros((2, 3), np.float32)
        with pytest.raises(ValueError, match="unknown activation"):
            ck.activation_backward("gelu", a, a, out=a)

    def test_not_an_array(self, ck):
        a = np.zeros((2, 3), np.float32)
        with pytest.raises(TypeError):
            ck.activation_backward("relu", [[0.0]], a, out=a)


# ------------------------------------------------------------ CUDA simulator: float16 variants
# The simulator runs float16 arrays natively (NumPy float16 elements; the kernels widen each
# load to float32 and NumPy rounds each store to float16, as the GPU's cvt.rn.f16.f32 does).

HALF_TOL = {"rtol": 2.0 ** -10, "atol": 2.0 ** -24}
"""One float16 ulp relative (2**-10) plus the smallest float16 subnormal: the kernel and
the reference round float32 values that may differ in the last float32 bits."""


def _half_expected(values):
    """The float32 reference results rounded to float16, compared in float32."""
    with np.errstate(all="ignore"):
        return [np.asarray(v, np.float32).astype(np.float16).astype(np.float32) for v in values]


@CUDASIM
@pytest.mark.parametrize("kind", SIM_KINDS)
def test_cudasim_float16_matches_float32_reference_rounded(ck, rng, kind):
    alpha = SIM_ALPHA.get(kind, 0.1)
    with np.errstate(all="ignore"):
        z = _sim_edge_matrix("float16", rng)
        dy = _sim_edge_matrix("float16", rng)[::-1].copy()
        b = rng.standard_normal(z.shape[1]).astype(np.float32)  # a float32 master weight
        z32, dy32 = z.astype(np.float32), dy.astype(np.float32)
        saved = (reference.activation_forward(np, kind, z32, alpha)
                 if kind in reference.BACKWARD_FROM_OUTPUT else z32).astype(np.float16)
        expected = _half_expected((
            reference.activation_forward(np, kind, z32, alpha),
            reference.bias_activation_forward(np, z32, b, kind, alpha),
            reference.activation_backward(np, kind, dy32, saved.astype(np.float32), alpha)))
    got = (ck.activation_forward(kind, z, alpha, out=np.full_like(z, 7.0)),
           ck.bias_activation_forward(z, b, kind, alpha, out=np.full_like(z, 7.0)),
           ck.activation_backward(kind, dy, saved, alpha, out=np.full_like(z, 7.0)))
    for g, e in zip(got, expected):
        assert g.dtype == np.float16
        np.testing.assert_allclose(g.astype(np.float32), e, equal_nan=True, **HALF_TOL)


@CUDASIM
def test_cudasim_float16_computes_in_float32(ck):
    # 2048 + 1.0004 = 2049.0004 in float32 rounds up to 2050 in float16; a float16 sum would
    # round the bias to 1 first, then 2049 (a tie) to the even 2048
    z = np.array([[2048.0]], np.float16)
    b = np.array([1.0004], np.float32)
    out = ck.bias_activation_forward(z, b, "identity", out=np.empty_like(z))
    assert out[0, 0] == np.float16(2050.0)


@CUDASIM
def test_cudasim_float16_bias_must_be_float32(ck):
    z = np.zeros((2, 3), np.float16)
    with pytest.raises(TypeError, match="float32"):
        ck.bias_activation_forward(z, np.zeros(3, np.float16), "relu", out=z)


# ------------------------------------------------------------ CUDA simulator: bfloat16 variants
# bfloat16 values are stored as uint16 bit patterns (the top half of a float32). Under the
# simulator the in-kernel bit reinterpretation is NumPy's view (libdevice on a GPU); the
# widening, float32 math and round-to-nearest-even store are the kernel's own code.

BF16_TOL = {"rtol": 2.0 ** -7, "atol": 0.0}
"""One bfloat16 ulp relative (8-bit significand: 2**-7)."""


def _to_bf16_bits(x):
    """float32 values rounded to bfloat16 (the cast reference), as uint16 bits."""
    from dualnn.kernels.cast import reference as cast_reference

    rounded = cast_reference.round_bfloat16(np, np.asarray(x, np.float32))
    return (rounded.view(np.uint32) >> 16).astype(np.uint16)


def _from_bf16_bits(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


@CUDASIM
@pytest.mark.parametrize("kind", SIM_KINDS)
def test_cudasim_bfloat16_matches_float32_reference_rounded(ck, rng, kind):
    alpha = SIM_ALPHA.get(kind, 0.1)
    with np.errstate(all="ignore"):
        z = _to_bf16_bits(_sim_edge_matrix("float32", rng))
        dy = _to_bf16_bits(_sim_edge_matrix("float32", rng)[::-1].copy())
        b = rng.standard_normal(z.shape[1]).astype(np.float32)
        z32, dy32 = _from_bf16_bits(z), _from_bf16_bits(dy)
        saved = _to_bf16_bits(reference.activation_forward(np, kind, z32, alpha)
                              if kind in reference.BACKWARD_FROM_OUTPUT else z32)
        expected = [_from_bf16_bits(_to_bf16_bits(e)) for e in (
            reference.activation_forward(np, kind, z32, alpha),
            reference.bias_activation_forward(np, z32, b, kind, alpha),
            reference.activation_backward(np, kind, dy32, _from_bf16_bits(saved), alpha))]
    got = (ck.activation_forward(kind, z, alpha, out=np.full_like(z, 7)),
           ck.bias_activation_forward(z, b, kind, alpha, out=np.full_like(z, 7)),
           ck.activation_backward(kind, dy, saved, alpha, out=np.full_like(z, 7)))
    for g, e in zip(got, expected):
        assert g.dtype == np.uint16
        np.testing.assert_allclose(_from_bf16_bits(g), e, equal_nan=True, **BF16_TOL)


@CUDASIM
def test_cudasim_bfloat16_rounds_to_nearest_even_on_store(ck):
    # identity + float32 bias: the sum is exact in float32, the store rounds it
    z = _to_bf16_bits(np.array([1.0, 1.0, 1.0, -1.0], np.float32))
    b = np.array([2.0 ** -8, 3 * 2.0 ** -8, 2.0 ** -8 + 2.0 ** -20, 0.0], np.float32)
    z4 = z.reshape(1, 4)
    out = ck.bias_activation_forward(z4, b, "identity", out=np.empty_like(z4))
    # 1 + 2**-8: a tie -> even 1.0; 1 + 3 * 2**-8: a tie -> even 1 + 2**-6;
    # just above the tie -> up to 1 + 2**-7
    np.testing.assert_array_equal(_from_bf16_bits(out.ravel()),
                                  [1.0, 1.0 + 2.0 ** -6, 1.0 + 2.0 ** -7, -1.0])


@CUDASIM
def test_cudasim_bfloat16_nan_and_overflow(ck):
    big = np.float32(3.0e38)  # finite in bfloat16 (max ~3.39e38)
    z = _to_bf16_bits(np.array([[np.nan, big, -np.inf, 2.0]], np.float32))
    out = ck.bias_activation_forward(z, np.array([0, big, 0, 0], np.float32), "identity",
                                     out=np.empty_like(z))
    values = _from_bf16_bits(out.ravel())
    assert np.isnan(values[0])
    assert values[1] == np.inf and values[2] == -np.inf and values[3] == 2.0


@CUDASIM
@pytest.mark.parametrize("storage", ["float16", "bfloat16"])
def test_cudasim_backend_takes_16_bit_activations(rng, storage):
    from tests.support.cudasim_backend import CudaSimBackend

    backend = CudaSimBackend()
    z32 = rng.standard_normal((4, 6)).astype(np.float32)
    if storage == "float16":
        z, widen = z32.astype(np.float16), lambda a: a.astype(np.float32)
    else:
        z, widen = _to_bf16_bits(z32), _from_bf16_bits
    b = rng.standard_normal(6).astype(np.float32)
    y = backend.bias_activation_forward(z, b, "tanh")
    assert y.dtype == z.dtype
    expected = np.tanh(widen(z) + b)
    np.testing.assert_allclose(widen(y), expected, rtol=2.0 ** -7, atol=0)
    dz = backend.activation_backward("relu", z, z)
    assert dz.dtype == z.dtype
    np.testing.assert_array_equal(widen(dz), np.where(widen(z) > 0, widen(z), 0))
    # a 16-bit bias is not a master weight: the kernel is not taken, the reference runs
    assert backend._kernel_takes([(z, None)], [], params=[(b.astype(np.float16), (6,))],
                                 half=("float16", "bfloat16")) is None


def test_cpu_backend_does_not_take_16_bit_arrays():
    from dualnn.backend.numpy_backend import NumpyBackend

    backend = NumpyBackend()
    z = np.zeros((2, 3), np.float16)
    assert backend._kernel_takes([(z, None)]) is None
    assert backend._kernel_takes([(z.astype(np.float32), None)]) == "float32"
