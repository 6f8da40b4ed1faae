"""The NumPy twins of the real-16-bit-storage backend ops (``cast_storage``,
``matmul_mixed``, ``sum_rows_mixed``) and Linear's 16-bit branch, on the CPU.

The GPU versions (cuBLAS ``GemmEx``, casts into reused buffers) are compared against these
in ``tests/cupy_double/test_mixed_precision_gpu.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from dualnn.kernels.cast import reference as cast_reference

import dualnn as dn


def _float(a, dtype):
    return (a.astype(np.uint32) << 16).view(np.float32) if dtype == "bfloat16" \
        else a.astype(np.float32)


@pytest.fixture
def backend():
    return dn.backend.NumpyBackend(fused=False)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cast_storage_is_the_reference_rounding(backend, dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 7)) * 300).astype(np.float32)
    x[0, :3] = [np.inf, np.nan, 1e5]
    stored = backend.cast_storage(x, dtype)
    assert stored.dtype == np.dtype(backend.storage_dtype(dtype))
    with np.errstate(over="ignore"):
        expected = cast_reference.round_to(np, x, dtype)
    np.testing.assert_array_equal(_float(stored, dtype), expected)
    np.testing.assert_array_equal(backend.cast_storage(stored, "float32"), expected)
    assert backend.storage_kind(stored) == dtype
    with pytest.raises(dn.errors.ConfigurationError, match="uint16"):
        backend.storage_kind(np.zeros(3, np.int32))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_matmul_mixed_equals_float64_product_of_the_stored_values(backend, dtype):
    rng = np.random.default_rng(1)
    a = backend.cast_storage(rng.standard_normal((6, 4)).astype(np.float32), dtype)
    w = backend.cast_storage(rng.standard_normal((3, 4)).astype(np.float32), dtype)
    exact = _float(a, dtype).astype(np.float64) @ _float(w, dtype).astype(np.float64).T
    out = np.full((6, 3), 2.0, np.float32)
    backend.matmul_mixed(a, w, out, transpose_b=True)
    np.testing.assert_allclose(out, exact, rtol=1e-6, atol=1e-6)
    backend.matmul_mixed(a, w, out, transpose_b=True, accumulate=True)
    np.testing.assert_allclose(out, 2 * exact, rtol=1e-6, atol=1e-6)
    out16 = np.empty((6, 3), backend.storage_dtype(dtype))
    backend.matmul_mixed(a, w, out16, transpose_b=True)
    np.testing.assert_array_equal(out16, backend.cast_storage(exact.astype(np.float32), dtype))
    grad = np.zeros((3, 4), np.float32)
    backend.matmul_mixed(out16, a, grad, transpose_a=True)
    np.testing.assert_allclose(
        grad, _float(out16, dtype).astype(np.float64).T @ _float(a, dtype), rtol=1e-6,
        atol=1e-6)


def test_sum_rows_mixed_sums_in_float32(backend):
    dy = backend.cast_storage(np.full((4096, 2), 0.1, np.float32), "float16")
    out = np.ones(2, np.float32)
    backend.sum_rows_mixed(dy, out)
    # a float16 running sum would stall at 256 (0.1 is below its half-ulp there)
    np.testing.assert_allclose(out, 1 + 4096 * float(np.float16(0.1)), rtol=1e-6)
    backend.sum_rows_mixed(dy, out, overwrite=True)
    np.testing.assert_allclose(out, 4096 * float(np.float16(0.1)), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_linear_16_bit_branch_gradients(dtype):
    """Forward and backward of the 16-bit branch against float64 math on the same
    16-bit values (dW, db accumulate in float32 into the master gradients)."""
    with dn.use_backend(dn.backend.NumpyBackend(fused=False)):
        dn.seed(3)
        layer = dn.layers.Linear(5, 3)
    b = layer.backend
    rng = np.random.default_rng(2)
    layer.bias.data[...] = rng.standard_normal(3).astype(np.float32)
    x32 = rng.standard_normal((4, 5)).astype(np.float32)
    w16 = layer.refresh_weight16(dtype)
    x16 = b.cast_storage(x32, dtype)
    y16 = layer.forward(x16, training=True)
    assert y16.dtype == x16.dtype
    xf, wf = _float(x16, dtype).astype(np.float64), _float(w16, dtype).astype(np.float64)
    # the GEMM writes 16 bits, the bias pass reads them, adds in float32, writes 16 bits
    product = _float(b.cast_storage((xf @ wf.T).astype(np.float32), dtype), dtype)
    want = product + layer.bias.data
    np.testing.assert_array_equal(y16, b.cast_storage(want.astype(np.float32), dtype))
    dy16 = b.cast_storage(rng.standard_normal((4, 3)).astype(np.float32), dtype)
    dyf = _float(dy16, dtype).astype(np.float64)
    layer.zero_grad()
    dx16 = layer.backward(dy16)
    assert layer.weight.grad.dtype == np.float32 and dx16.dtype == x16.dtype
    np.testing.assert_allclose(layer.weight.grad, dyf.T @ xf, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer.bias.grad, dyf.sum(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(dx16, b.cast_storage((dyf @ wf).astype(np.float32), dtype))
    assert layer.backward(dy16, input_grad=False) is None
    np.testing.assert_allclose(layer.weight.grad, 2 * (dyf.T @ xf), rtol=1e-6, atol=1e-6)
    # a float32 input still takes the float32 branch
    assert layer.forward(x32).dtype == np.float32
