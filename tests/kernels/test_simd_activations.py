"""Sigmoid, tanh and ELU forward on the CPU: Numba passes around NumPy's SIMD exp/tanh/expm1.

Relative accuracy is checked against float64 (or longdouble) truth down to the subnormal
range, not only against the reference's absolute tolerance, because sigmoid's negative
tail (values like 1e-30) is what a loss on probabilities takes the log of.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from dualnn.backend import NumpyBackend
from dualnn.kernels import cpu
from dualnn.kernels import reference as R

FUSED = NumpyBackend(fused=True)
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
    got = cpu.activation_forward(kind, z, 0.0, np.empty_like(z))
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
    out = cpu.bias_activation_forward(z, b, kind, 0.0, np.empty_like(z))
    np.testing.assert_array_equal(z, z_before)
    assert_accurate(out, kind, v, dtype)
    assert cpu.bias_activation_forward(z, b, kind, 0.0, z) is z
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
    got = cpu.activation_forward(kind, z, 0.0, np.empty_like(z))
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
    got = cpu.activation_forward("elu", z, alpha, np.empty_like(z))
    np.testing.assert_allclose(got, want, rtol=4 * np.finfo(dtype).eps, atol=0,
                               equal_nan=True)
    in_place = z.copy()  # in place runs the scalar Numba loop: same values
    cpu.activation_forward("elu", in_place, alpha, in_place)
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
    got = cpu.activation_backward("elu", dy, z, 0.7, np.empty_like(dy))
    np.testing.assert_allclose(got, want, rtol=4 * np.finfo(dtype).eps,
                               atol=4 * np.finfo(dtype).smallest_subnormal, equal_nan=True)
    buf = dy.copy()
    assert cpu.activation_backward("elu", buf, z, 0.7, buf) is buf
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
