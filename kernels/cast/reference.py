"""Readable definitions of the 16-bit rounding ops (NumPy and CuPy namespaces).

``round_float16``: float32 -> nearest float16 -> float32 (IEEE round-to-nearest-even,
values beyond 65504 become inf, tiny values flush through float16's subnormals to 0).

``round_bfloat16``: float32 -> nearest bfloat16 -> float32: bfloat16 is the upper 16 bits
of a float32, so rounding adds ``0x7FFF + lsb`` to the bit pattern (``lsb`` the lowest
kept bit, which makes ties go to even) and clears the low 16 bits. NaN stays NaN (its
payload is kept in the high bits, made quiet); infinities stay infinite; finite values
above bfloat16's largest round to inf, as the hardware conversion does.

Shapes: any; the result has the input's shape and dtype float32.
"""

from __future__ import annotations

BF16_KEEP = 0xFFFF0000
BF16_HALF_MINUS_ONE = 0x7FFF
QUIET_NAN_BIT = 0x00400000


def round_float16(xp, x):
    """``x`` (float32) rounded to float16 precision, returned as a new float32 array."""
    return xp.astype(xp.astype(x, xp.float16), xp.float32)


def round_bfloat16(xp, x):
    """``x`` (float32) rounded to bfloat16 precision (nearest, ties to even), as float32."""
    x = xp.asarray(x, dtype=xp.float32)
    bits = x.view(xp.uint32)
    lsb = (bits >> 16) & 1
    rounded = (bits + (lsb + BF16_HALF_MINUS_ONE)) & BF16_KEEP
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    kept = (bits | QUIET_NAN_BIT) & BF16_KEEP
    out = xp.where(nan, kept, rounded).astype(xp.uint32)
    return out.view(xp.float32)


def bfloat16_bits(xp, x):
    """``x`` (float32) rounded to bfloat16 as bit patterns: uint16, the upper half of each
    rounded float32 (what a bfloat16 GEMM reads)."""
    return (round_bfloat16(xp, x).view(xp.uint32) >> 16).astype(xp.uint16)


def round_to(xp, x, dtype):
    """Round ``x`` to ``dtype`` ("float16", "bfloat16") precision; "float32" copies."""
    if dtype == "float16":
        return round_float16(xp, x)
    if dtype == "bfloat16":
        return round_bfloat16(xp, x)
    if dtype == "float32":
        return xp.asarray(x, dtype=xp.float32, copy=True)
    raise ValueError(f"round_to: dtype must be float16, bfloat16 or float32, got {dtype!r}")
