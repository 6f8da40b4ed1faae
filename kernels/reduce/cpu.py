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


_KERNELS = KernelSet(globals(), kernels=("column_sum",))


def column_sum(a, *, out, accumulate=False):
    """``out = a.sum(axis=0)`` (``out += ...`` with ``accumulate``) for a ``(n, c)`` float
    array; ``out`` is ``(c,)`` of ``a``'s dtype. Returns ``out``."""
    if not isinstance(a, np.ndarray) or a.ndim != 2:
        raise ValueError(f"column_sum: a must be a 2-D NumPy array, got "
                         f"{getattr(a, 'shape', type(a).__name__)}")
    if a.dtype not in (np.float32, np.float64) or out.dtype != a.dtype:
        raise ValueError(f"column_sum: a and out must share a float32/float64 dtype, got "
                         f"{a.dtype} and {out.dtype}")
    if not a.flags.c_contiguous or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("column_sum: a and out must be C-contiguous (out writable)")
    if out.shape != (a.shape[1],):
        raise ValueError(f"column_sum: out must have shape ({a.shape[1]},), got {out.shape}")
    _KERNELS.get("column_sum", a.size, _SERIAL)(a, out, bool(accumulate))
    return out


__all__ = ["column_sum"]
