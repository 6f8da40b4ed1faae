"""16-bit rounding as a Numba-CUDA kernel and its launcher (twin of ``reference.py``).

One grid-stride kernel rounds float32 bit patterns (viewed as uint32) to bfloat16
precision, round to nearest even, NaN kept quiet. float16 needs no kernel on a GPU
(CuPy's ``astype`` converts natively). The kernel is the same for both float dtypes of
the family machinery (it sees only bits); its launcher accepts float32 arrays.
"""

from __future__ import annotations

import numpy as np

from .._cuda import KernelFamily, check, flat, grid_1d, numba_cuda, require_array, stream_for
from ..ops import BF16_HALF_MINUS_ONE as _HALF_MINUS_ONE
from ..ops import BF16_SHIFT as _SHIFT
from ..ops import F32_ABS_BITS as _ABS
from ..ops import F32_INF_BITS as _INF
from ..ops import F32_QUIET_BIT as _QUIET

cuda = None
"""``numba.cuda`` once the kernels are made (the simulator swaps this global)."""

SIGNATURES = {"round_bfloat16_bits": "void(uint32[::1], uint32[::1])"}
"""Explicit signature of each kernel below (no float dtype: it works on bit patterns)."""

_KEEP = np.uint32(0xFFFF0000)
_ONE = np.uint32(1)


def _make_kernels(dtype_name):
    """The Python functions of this family's kernels (the same for every dtype)."""
    global cuda
    cuda = numba_cuda()

    def round_bfloat16_bits(src, dst):
        """``dst[i]`` = float32 bits ``src[i]`` rounded to bfloat16; ``dst`` may be ``src``."""
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, src.shape[0], stride):
            bits = src[i]
            if (bits & _ABS) > _INF:
                dst[i] = (bits | _QUIET) & _KEEP
            else:
                dst[i] = (bits + (_HALF_MINUS_ONE + ((bits >> _SHIFT) & _ONE))) & _KEEP

    return {"round_bfloat16_bits": round_bfloat16_bits}


KERNELS = KernelFamily(_make_kernels, SIGNATURES)
"""This family's kernels: signatures, Python functions, compiled kernels."""


def round_bfloat16(x, *, out):
    """``x`` (float32, any shape) rounded to bfloat16 precision into ``out``; returns it.

    ``out`` may be ``x``. CuPy arrays (NumPy arrays under the CUDA simulator).
    """
    require_array("round_bfloat16", "x", x)
    dtype = check("round_bfloat16", {"x": (x, None), "out": (out, x.shape)})
    if dtype != "float32":
        raise TypeError(f"round_bfloat16: x must be float32, got {dtype}")
    size = int(np.prod(x.shape, dtype=np.int64))
    if size:
        blocks, threads = grid_1d(size)
        kernel = KERNELS.compiled("round_bfloat16_bits", "float32")
        kernel[blocks, threads, stream_for(x)](flat(x).view(np.uint32),
                                                flat(out).view(np.uint32))
    return out
