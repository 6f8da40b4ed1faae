"""Column sum as a Numba kernel on NumPy arrays (twin of ``reference.column_sum``).

Rows are added in index order into a zeroed accumulator of the output's dtype, then
written (or added) into ``out``: the result does not depend on the thread count. Numba is
imported on the first call, never at import.
"""

from __future__ import annotations

import math

import numpy as np

from .._numba import KernelSet

_SERIAL = math.inf
"""Threshold that always picks the serial build (an order-dependent reduction)."""

HALF_BLOCK_ROWS = 256
"""Rows of 16-bit input widened to float32 at a time (Numba has no CPU float16): the only
temporary of a 16-bit column sum, whatever the batch size."""


def _k_column_sum(a, out, accumulate):
    n, c = a.shape
    total = np.zeros(c, dtype=out.dtype)
    for i in range(n):
        for f in range(c):
            total[f] += a[i, f]
    for f in range(c):
        if accumulate:
            out[f] += total[f]
        else:
            out[f] = total[f]


def _k_column_sums2(a, b, out, accumulate):
    n, c = a.shape
    total = np.zeros(2 * c, dtype=out.dtype)
    for i in range(n):
        for f in range(c):
            v = a[i, f]
            total[f] += v
            total[c + f] += v * b[i, f]
    for f in range(2 * c):
        if accumulate:
            out[f] += total[f]
        else:
            out[f] = total[f]


_KERNELS = KernelSet(globals(), kernels=("column_sum", "column_sums2"))


def _check(name, a, out, out_shape):
    if not isinstance(a, np.ndarray) or a.ndim != 2:
        raise ValueError(f"{name}: a must be a 2-D NumPy array, got "
                         f"{getattr(a, 'shape', type(a).__name__)}")
    if a.dtype not in (np.float32, np.float64) or out.dtype != a.dtype:
        raise ValueError(f"{name}: a and out must share a float32/float64 dtype, got "
                         f"{a.dtype} and {out.dtype}")
    if not a.flags.c_contiguous or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{name}: a and out must be C-contiguous (out writable)")
    if out.shape != out_shape:
        raise ValueError(f"{name}: out must have shape {out_shape}, got {out.shape}")


def column_sum(a, *, out, accumulate=False):
    """``out = a.sum(axis=0)`` (``out += ...`` with ``accumulate``) for a ``(n, c)`` float
    array; ``out`` is ``(c,)`` of ``a``'s dtype, or float32 for float16 / bfloat16 (uint16
    bits) ``a``, summed in float32 a block of rows at a time. Returns ``out``."""
    if isinstance(a, np.ndarray) and a.dtype in (np.float16, np.uint16):
        return _column_sum_half(a, out, accumulate)
    _check("column_sum", a, out, (a.shape[1],) if getattr(a, "ndim", 0) == 2 else None)
    _KERNELS.get("column_sum", a.size, _SERIAL)(a, out, bool(accumulate))
    return out


def _column_sum_half(a, out, accumulate):
    if a.ndim != 2 or not a.flags.c_contiguous:
        raise ValueError(f"column_sum: a must be a C-contiguous 2-D array, got shape "
                         f"{a.shape}")
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or \
            out.shape != (a.shape[1],) or not out.flags.writeable:
        raise ValueError(f"column_sum: out must be a writable float32 array of shape "
                         f"({a.shape[1]},) for 16-bit a, got "
                         f"{getattr(out, 'dtype', None)} {getattr(out, 'shape', None)}")
    total = np.zeros(a.shape[1], dtype=np.float32)
    for start in range(0, a.shape[0], HALF_BLOCK_ROWS):
        block = a[start:start + HALF_BLOCK_ROWS]
        if a.dtype == np.uint16:  # bfloat16 bits: the float32 with these top 16 bits
            wide = (block.astype(np.uint32) << np.uint32(16)).view(np.float32)
        else:
            wide = block.astype(np.float32)
        total += wide.sum(axis=0, dtype=np.float32)
    if accumulate:
        out += total
    else:
        out[...] = total
    return out


def column_sums2(a, b, *, out, accumulate=False):
    """``out[:c] = a.sum(axis=0)``, ``out[c:] = (a * b).sum(axis=0)`` (``+=`` with
    ``accumulate``) for ``(n, c)`` float arrays ``a``, ``b`` of one dtype; ``out`` is
    ``(2 c,)``. Returns ``out``."""
    if not isinstance(b, np.ndarray) or b.shape != getattr(a, "shape", None):
        got = getattr(b, "shape", type(b).__name__)
        raise ValueError(f"column_sums2: b must be a NumPy array of a's shape "
                         f"{getattr(a, 'shape', None)}, got {got}")
    if b.dtype != getattr(a, "dtype", None) or not b.flags.c_contiguous:
        raise ValueError(f"column_sums2: b must be C-contiguous of a's dtype, got {b.dtype}")
    c = a.shape[1] if a.ndim == 2 else -1
    _check("column_sums2", a, out, (2 * c,))
    _KERNELS.get("column_sums2", a.size, _SERIAL)(a, b, out, bool(accumulate))
    return out


__all__ = ["column_sum", "column_sums2"]
