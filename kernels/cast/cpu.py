"""16-bit rounding as Numba kernels on NumPy arrays (twin of ``reference.py``).

``round_bfloat16`` works on the float32 bit patterns (round to nearest even, NaN kept
quiet), in parallel for large arrays. ``bfloat16_bits`` writes the same rounded values as
bfloat16 bit patterns (uint16, the input of a bfloat16 GEMM); ``round_bfloat16_bits``
writes both in one pass (the rounded float32 array the float32 layers read, and the bits
the GEMMs read). ``round_float16`` is NumPy's own float32 -> float16
-> float32 conversion (a C loop already; IEEE rounding with subnormals), into ``out``.
"""

from __future__ import annotations

import numpy as np

from .._numba import FORWARD_PARALLEL_THRESHOLD, KernelSet, prange

_KEEP = np.uint32(0xFFFF0000)
_HALF_MINUS_ONE = np.uint32(0x7FFF)
_ABS = np.uint32(0x7FFFFFFF)
_INF = np.uint32(0x7F800000)
_QUIET = np.uint32(0x00400000)
_ONE = np.uint32(1)
_SHIFT = np.uint32(16)


def bfloat16_on_load(v, bf16):
    """``v``, or ``v`` (float32) rounded to bfloat16 as ``round_bfloat16`` rounds it (nearest,
    ties to even; NaN kept quiet) when ``bf16``: an inlined helper for kernels that read an
    array whose bfloat16 rounding was left to its reader (batch norm's). Plain Python here;
    a kernel set lists it among its helpers, with the constants it names in its namespace."""
    if not bf16:
        return v
    b = np.float32(v).view(np.uint32)
    quiet = (b | _QUIET) & _KEEP
    nearest = (b + _HALF_MINUS_ONE + ((b >> _SHIFT) & _ONE)) & _KEEP
    # one assignment per viewed name: Numba's .view wants a single definition
    return np.uint32(quiet if (b & _ABS) > _INF else nearest).view(np.float32)


def _k_round_bfloat16(src, dst):
    for i in prange(src.shape[0]):
        bits = src[i]
        if (bits & _ABS) > _INF:
            dst[i] = (bits | _QUIET) & _KEEP
        else:
            dst[i] = (bits + (_HALF_MINUS_ONE + ((bits >> _SHIFT) & _ONE))) & _KEEP


def _k_bfloat16_bits(src, bits):
    for i in prange(src.shape[0]):
        b = src[i]
        if (b & _ABS) > _INF:
            bits[i] = np.uint16((b | _QUIET) >> _SHIFT)
        else:
            bits[i] = np.uint16((b + (_HALF_MINUS_ONE + ((b >> _SHIFT) & _ONE))) >> _SHIFT)


def _k_round_bfloat16_bits(src, dst, bits):
    for i in prange(src.shape[0]):
        b = src[i]
        if (b & _ABS) > _INF:
            kept = (b | _QUIET) & _KEEP
        else:
            kept = (b + (_HALF_MINUS_ONE + ((b >> _SHIFT) & _ONE))) & _KEEP
        dst[i] = kept
        bits[i] = np.uint16(kept >> _SHIFT)


_KERNELS = KernelSet(globals(), kernels=("round_bfloat16", "bfloat16_bits",
                                          "round_bfloat16_bits"))


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


def _check_bits(x, bits):
    if (not isinstance(bits, np.ndarray) or bits.dtype != np.uint16
            or not bits.flags.c_contiguous or not bits.flags.writeable):
        raise ValueError(f"bits must be a writeable C-contiguous uint16 NumPy array, got "
                         f"{getattr(bits, 'dtype', type(bits).__name__)}")
    if bits.shape != x.shape:
        raise ValueError(f"bits must have x's shape {x.shape}, got {bits.shape}")


def bfloat16_bits(x, *, bits):
    """``x`` rounded to bfloat16 (nearest, ties to even) as bit patterns into ``bits``.

    Parameters
    ----------
    x : ndarray, float32, C-contiguous, any shape
    bits : ndarray, uint16, C-contiguous, x's shape
        Receives the upper 16 bits of each rounded value; returned.
    """
    _check(x, x)
    _check_bits(x, bits)
    if x.size:
        _KERNELS.get("bfloat16_bits", x.size, FORWARD_PARALLEL_THRESHOLD)(
            x.reshape(-1).view(np.uint32), bits.reshape(-1))
    return bits


def round_bfloat16_bits(x, *, out, bits):
    """``x`` rounded to bfloat16: as float32 into ``out`` and as bits into ``bits``, one pass.

    Parameters
    ----------
    x, out : ndarray, float32, C-contiguous, same shape (any); ``out`` may be ``x``
    bits : ndarray, uint16, C-contiguous, x's shape

    Returns
    -------
    (out, bits)
    """
    _check(x, out)
    _check_bits(x, bits)
    if x.size:
        _KERNELS.get("round_bfloat16_bits", x.size, FORWARD_PARALLEL_THRESHOLD)(
            x.reshape(-1).view(np.uint32), out.reshape(-1).view(np.uint32), bits.reshape(-1))
    return out, bits


def round_float16(x, *, out):
    """``x`` rounded to float16 precision (overflow to inf) into ``out``; returns ``out``."""
    _check(x, out)
    with np.errstate(over="ignore"):
        out[...] = x.astype(np.float16)
    return out
