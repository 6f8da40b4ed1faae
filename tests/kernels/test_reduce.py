"""Column-sum kernels (``column_sum``: the bias gradient, also from 16-bit rows;
``column_sums2``: ``sum a`` and ``sum a * b``): the reference, CPU and CUDA-simulator twins
against float64 sums, on shapes with one row, one column and sizes no block divides; the
CUDA twins are deterministic (same bits on every call, no atomics) and accumulate."""

from __future__ import annotations

import numpy as np
import pytest
from dualnn.kernels.reduce import reference as R

from .cases import CUDASIM, DTYPE_NAMES, tolerances

DEVICES = ["reference", "cpu", pytest.param("cudasim", marks=CUDASIM)]

SHAPES = [(1, 1), (1, 9), (13, 1), (5, 7), (33, 17), (64, 3), (0, 4), (6, 0)]
"""One row, one column, no row or no column, odd sizes (several blocks and row slices on
the tiny test grid, none a multiple of the block)."""


def _data(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _run(device, a, out, accumulate, ck=None):
    if device == "reference":
        total = np.asarray(R.column_sum(np, a))
        return out + total if accumulate else total
    if device == "cpu":
        from dualnn.kernels import cpu

        return cpu.column_sum(a, out=out, accumulate=accumulate)
    scratch = np.full(ck.column_sum_scratch_shape(*a.shape), np.nan, dtype=a.dtype)
    return ck.column_sum(a, out=out, scratch=scratch, accumulate=accumulate)


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("device", DEVICES)
def test_column_sum_matches_float64_sums(device, dtype, shape, accumulate, request):
    ck = request.getfixturevalue("tiny_grid") if device == "cudasim" else None
    a = _data(shape, dtype)
    start = _data((shape[1],), dtype, seed=1)
    out = start.copy()
    got = _run(device, a, out, accumulate, ck)
    want = a.astype(np.float64).sum(axis=0) + (start if accumulate else 0)
    assert got.shape == (shape[1],) and got.dtype == np.dtype(dtype)
    rtol, atol = tolerances(dtype)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * max(shape[0], 1))
    if device != "reference":
        assert got is out


@CUDASIM
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_cuda_column_sum_is_deterministic_and_matches_the_cpu_twin(dtype, tiny_grid):
    ck = tiny_grid
    a = (_data((37, 11), dtype) * 1e3).astype(dtype)
    scratch = np.empty(ck.column_sum_scratch_shape(*a.shape), dtype=dtype)
    first = ck.column_sum(a, out=np.empty(11, dtype), scratch=scratch).copy()
    for _ in range(3):
        again = ck.column_sum(a, out=np.empty(11, dtype), scratch=scratch)
        np.testing.assert_array_equal(again, first)
    from dualnn.kernels import cpu

    rtol, atol = tolerances(dtype)
    np.testing.assert_allclose(first, cpu.column_sum(a, out=np.empty(11, dtype)),
                               rtol=rtol, atol=atol * 1e3)


@CUDASIM
def test_cuda_column_sum_checks_its_arguments(ck):
    a = np.ones((4, 3))
    with pytest.raises(ValueError, match="out has shape"):
        ck.column_sum(a, out=np.empty(4), scratch=np.empty((1, 3)))
    with pytest.raises(TypeError, match="scratch has dtype float32"):
        ck.column_sum(a, out=np.empty(3), scratch=np.empty((1, 3), np.float32))
    with pytest.raises(ValueError, match="scratch must have shape"):
        ck.column_sum(a, out=np.empty(3), scratch=np.empty((2, 4)))
    with pytest.raises(ValueError, match="must be 2-D"):
        ck.column_sum(np.ones(3), out=np.empty(3), scratch=np.empty((1, 3)))


def test_cpu_column_sum_checks_its_arguments():
    from dualnn.kernels import cpu

    with pytest.raises(ValueError, match="out must have shape"):
        cpu.column_sum(np.ones((4, 3)), out=np.empty(4))
    with pytest.raises(ValueError, match="share a float32/float64 dtype"):
        cpu.column_sum(np.ones((4, 3)), out=np.empty(3, np.float32))
    with pytest.raises(ValueError, match="2-D"):
        cpu.column_sum(np.ones(3), out=np.empty(3))


def _run_sums2(device, a, b, out, accumulate, ck=None):
    if device == "reference":
        total = np.asarray(R.column_sums2(np, a, b))
        return out + total if accumulate else total
    if device == "cpu":
        from dualnn.kernels import cpu

        return cpu.column_sums2(a, b, out=out, accumulate=accumulate)
    scratch = np.full(ck.column_sums2_scratch_shape(*a.shape), np.nan, dtype=a.dtype)
    return ck.column_sums2(a, b, out=out, scratch=scratch, accumulate=accumulate)


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("device", DEVICES)
def test_column_sums2_matches_float64_sums(device, dtype, shape, accumulate, request):
    ck = request.getfixturevalue("tiny_grid") if device == "cudasim" else None
    a, b = _data(shape, dtype), _data(shape, dtype, seed=2)
    start = _data((2 * shape[1],), dtype, seed=1)
    out = start.copy()
    got = _run_sums2(device, a, b, out, accumulate, ck)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want = np.concatenate([a64.sum(axis=0), (a64 * b64).sum(axis=0)])
    want = want + (start if accumulate else 0)
    assert got.shape == (2 * shape[1],) and got.dtype == np.dtype(dtype)
    rtol, atol = tolerances(dtype)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * max(shape[0], 1))
    if device != "reference":
        assert got is out


@CUDASIM
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_cuda_column_sums2_is_deterministic_and_matches_the_cpu_twin(dtype, tiny_grid):
    ck = tiny_grid
    a = (_data((37, 11), dtype) * 1e3).astype(dtype)
    b = _data((37, 11), dtype, seed=3)
    scratch = np.empty(ck.column_sums2_scratch_shape(*a.shape), dtype=dtype)
    first = ck.column_sums2(a, b, out=np.empty(22, dtype), scratch=scratch).copy()
    for _ in range(2):
        again = ck.column_sums2(a, b, out=np.empty(22, dtype), scratch=scratch)
        np.testing.assert_array_equal(again, first)
    from dualnn.kernels import cpu

    rtol, atol = tolerances(dtype)
    np.testing.assert_allclose(first, cpu.column_sums2(a, b, out=np.empty(22, dtype)),
                               rtol=rtol, atol=atol * 1e3)


@CUDASIM
def test_cuda_column_sums2_checks_its_arguments(ck):
    a = np.ones((4, 3))
    with pytest.raises(ValueError, match="out has shape"):
        ck.column_sums2(a, a, out=np.empty(3), scratch=np.empty((1, 6)))
    with pytest.raises(ValueError, match="b has shape"):
        ck.column_sums2(a, np.ones((4, 2)), out=np.empty(6), scratch=np.empty((1, 6)))
    with pytest.raises(ValueError, match="scratch must have shape"):
        ck.column_sums2(a, a, out=np.empty(6), scratch=np.empty((2, 3)))


def test_cpu_column_sums2_checks_its_arguments():
    from dualnn.kernels import cpu

    a = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"out must have shape \(6,\)"):
        cpu.column_sums2(a, a, out=np.empty(3))
    with pytest.raises(ValueError, match="b must be a NumPy array of a's shape"):
        cpu.column_sums2(a, np.ones((4, 2)), out=np.empty(6))
    with pytest.raises(ValueError, match="b must be C-contiguous of a's dtype"):
        cpu.column_sums2(a, np.ones((4, 3), np.float32), out=np.empty(6))


def _half_data(shape, kind, seed=0):
    """``(stored, widened)``: 16-bit values (bfloat16 as uint16 bits) and their float64."""
    values = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    if kind == "float16":
        stored = values.astype(np.float16)
        return stored, stored.astype(np.float64)
    stored = (values.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    wide = (stored.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return stored, wide.astype(np.float64)


HALF_SHAPES = [(1, 1), (1, 9), (13, 1), (33, 17), (300, 3), (0, 4), (6, 0)]
"""As SHAPES, plus more rows than the CPU twin widens at a time."""


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("shape", HALF_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cudasim", marks=CUDASIM)])
def test_column_sum_of_16_bit_rows_adds_in_float32(device, kind, shape, accumulate, request):
    stored, wide = _half_data(shape, kind)
    start = _data((shape[1],), "float32", seed=1)
    out = start.copy()
    if device == "cpu":
        from dualnn.kernels import cpu

        got = cpu.column_sum(stored, out=out, accumulate=accumulate)
    else:
        ck = request.getfixturevalue("tiny_grid")
        scratch = np.full(ck.column_sum_scratch_shape(*shape), np.nan, np.float32)
        got = ck.column_sum(stored, out=out, scratch=scratch, accumulate=accumulate)
    want = wide.sum(axis=0) + (start if accumulate else 0)
    assert got is out and got.dtype == np.float32
    # float32 accumulation: far tighter than a float16 accumulator (eps ~1e-3) could give
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(shape[0], 1))


@CUDASIM
def test_cuda_column_sum_of_16_bit_rows_checks_the_output_dtype(ck):
    a = np.ones((4, 3), np.float16)
    with pytest.raises(TypeError, match="out has dtype float16, expected float32"):
        ck.column_sum(a, out=np.empty(3, np.float16), scratch=np.empty((1, 3), np.float32))
    with pytest.raises(TypeError, match="scratch has dtype float64, expected float32"):
        ck.column_sum(a, out=np.empty(3, np.float32), scratch=np.empty((1, 3)))


def test_cpu_column_sum_of_16_bit_rows_checks_the_output():
    from dualnn.kernels import cpu

    with pytest.raises(ValueError, match="writable float32 array of shape"):
        cpu.column_sum(np.ones((4, 3), np.float16), out=np.empty(3, np.float16))
