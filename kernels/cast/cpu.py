"""16-bit rounding as Numba kernels on NumPy arrays (twin of ``reference.py``).

``round_bfloat16`` works on the float32 bit patterns (round to nearest even, NaN kept
quiet), in parallel for large arrays. ``round_float16`` is NumPy's own float32 -> float16
-> float32 conversion (a C loop already; IEEE rounding with subnormals), into ``out``.
"""

from __future__ import annotations

import numpy as np

from .._numba import KernelSet, prange

_KEEP = np.uint32(0xFFFF0000)
_HALF_MINUS_ONE = np.uint32(0x7FFF)
_ABS = np.uint32(0x7FFFFFFF)
_INF = np.uint32(0x7F800000)
_QUIET = np.uint32(0x00400000)
_ONE = np.uint32(1)
_SHIFT = np.uint32(16)


def _k_round_bfloat16(src, dst):
    for i in prange(src.shape[0]):
        bits = src[i]
        if (bits & _ABS) > _INF:
            dst[i] = (bits | _QUIET) & _KEEP
        else:
            dst[i] = (bits + (_HALF_MINUS_ONE + ((bits >> _SHIFT) & _ONE))) & _KEEP


_KERNELS = KernelSet(globals(), kernels=("round_bfloat16",))


def _check(x, out):
    for name, a in (("x", x), ("out", out)):
        if not isinstance(a, np.ndarray) or a.dtype != np.float32 or not a.flags.c_contiguous:
            raise ValueError(f"{name} must be a C-contiguous float32 NumPy array, got "
                             f"{getattr(a, 'dtype', type(a).__name__)}")
    if out.shape != x.shape:
        raise ValueError(f"out must have x's shape {x.shape}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")


def round_bfloat16(x, *, out):
    """``x`` rounded to bfloat16 precision into ``out`` (may be ``x``); returns ``out``.

    Parameters
    ----------
    x, out : ndarray, float32, C-contiguous, same shape (any)
    """
    _check(x, out)
    if x.size:
        _KERNELS.get("round_bfloat16", x.size)(x.reshape(-1).view(np.uint32),
                                               out.reshape(-1).view(np.uint32))
    return out


def round_float16(x, *, out):
    """``x`` rounded to float16 precision (overflow to inf) into ``out``; returns ``out``."""
    _check(x, out)
    with np.errstate(over="ignore"):
        out[...] = x.astype(np.float16)
    return out
