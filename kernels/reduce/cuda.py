"""Column sum over the batch axis as Numba-CUDA kernels, and its launcher.

The batch-norm reductions' scheme: a 2-D grid (features x row slices) in which each
thread adds a fixed, strided set of rows of one feature into ``partial[slice, feature]``
(adjacent threads read adjacent features of a row: coalesced), then a merge adds each
feature's slices in order into ``out``. No atomics: deterministic for a given scratch
shape (:func:`column_sum_scratch_shape`). Used for the bias gradient of a Linear layer;
:func:`column_sums2` (``sum a`` and ``sum a * b`` in one pass) for batch norm's other
batch-axis reductions (eval-mode and synchronized backward, synchronized statistics).
"""

from __future__ import annotations

import numpy as np

from .._cuda import (
    KernelFamily,
    bit_casts,
    check,
    config,
    dtype_constants,
    grid_1d,
    numba_cuda,
    require_array,
    stream_for,
)
from ..ops import BF16_SHIFT as _SHIFT
from ..ops import FLOAT_DTYPES
from ..ops import HALF_DTYPES as _HALF

cuda = None
"""``numba.cuda`` once the kernels are made (a module global the simulator can swap)."""

SIGNATURES = {
    "column_sum_partial": "void({f}[:, ::1], {a}[:, ::1])",
    "column_sum_merge": "void({a}[:, ::1], {a}[::1], int32)",
    "column_sums2_partial": "void({f}[:, ::1], {f}[:, ::1], {f}[:, ::1])",
}
"""Explicit signature of each kernel below (``{f}``: the input's storage dtype, ``{a}``: the
accumulator's, float32 for 16-bit inputs)."""

HALF_DTYPES = {"column_sum_partial": _HALF}
"""The partial sums also read float16 and bfloat16 (uint16 bits), widening each element to
a float32 accumulator (a mixed-precision bias gradient, without a widened copy of ``dy``);
the merge then runs in float32."""


def _make_kernels(dtype_name):
    """The Python functions of this family's kernels for one float dtype."""
    global cuda
    cuda = numba_cuda()
    cast, zero, _, _ = dtype_constants(dtype_name)
    if dtype_name == "bfloat16":
        return _make_bfloat16_kernels()

    def column_sum_partial(a, partial):
        """``partial[r, f] = sum of a[i, f]`` over rows ``i = r, r + S, ...`` (``S`` slices)."""
        n = a.shape[0]
        c = a.shape[1]
        slices = partial.shape[0]
        f0, r0 = cuda.grid(2)
        fstride, rstride = cuda.gridsize(2)
        for f in range(f0, c, fstride):
            for r in range(r0, slices, rstride):
                total = zero
                for i in range(r, n, slices):
                    total += cast(a[i, f])
                partial[r, f] = total

    def column_sum_merge(partial, out, accumulate):
        """``out[f] (+)= sum_r partial[r, f]``, slices in order."""
        slices = partial.shape[0]
        c = partial.shape[1]
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for f in range(start, c, stride):
            total = zero
            for r in range(slices):
                total += partial[r, f]
            if accumulate:
                out[f] += total
            else:
                out[f] = total

    def column_sums2_partial(a, b, partial):
        """``partial[r, f] = sum a[i, f]`` and ``partial[r, c + f] = sum a[i, f] * b[i, f]``
        over rows ``i = r, r + S, ...``: both sums in one read of ``a`` (no ``a * b``)."""
        n = a.shape[0]
        c = a.shape[1]
        slices = partial.shape[0]
        f0, r0 = cuda.grid(2)
        fstride, rstride = cuda.gridsize(2)
        for f in range(f0, c, fstride):
            for r in range(r0, slices, rstride):
                total = zero
                dot = zero
                for i in range(r, n, slices):
                    v = a[i, f]
                    total += v
                    dot += v * b[i, f]
                partial[r, f] = total
                partial[r, c + f] = dot

    kernels = dict(locals())
    return {name: kernels[name] for name in SIGNATURES}


def _make_bfloat16_kernels():
    """The partial sums of bfloat16 stored as uint16 bits (``bits << 16`` is the float32),
    written out: a device function cannot be compiled to PTX without a GPU."""
    zero = np.float32(0.0)
    u32 = np.uint32
    as_float, _ = bit_casts()

    def column_sum_partial(a, partial):
        """bfloat16 twin of the generic ``column_sum_partial`` (float32 ``partial``)."""
        n = a.shape[0]
        c = a.shape[1]
        slices = partial.shape[0]
        f0, r0 = cuda.grid(2)
        fstride, rstride = cuda.gridsize(2)
        for f in range(f0, c, fstride):
            for r in range(r0, slices, rstride):
                total = zero
                for i in range(r, n, slices):
                    total += as_float(u32(a[i, f]) << _SHIFT)
                partial[r, f] = total

    return {"column_sum_partial": column_sum_partial}


KERNELS = KernelFamily(_make_kernels, SIGNATURES, HALF_DTYPES)
"""This family's kernels: signatures, Python functions, compiled kernels."""


def column_sum_scratch_shape(n, c):
    """Shape ``(S, c)`` of the scratch a column sum over ``(n, c)`` needs (``S`` row slices,
    as batch norm's: about ``bn_rows_per_slice`` rows per thread, at most ``bn_max_slices``)."""
    slices = max(1, min(-(-n // max(1, config.bn_rows_per_slice)), config.bn_max_slices,
                        max(n, 1)))
    return (slices, c)


def _grid(c, slices):
    bx = max(1, min(config.bn_block_features, c))
    by = max(1, min(config.bn_block_slices, slices))
    return (-(-c // bx), -(-slices // by)), (bx, by)


def column_sum(a, *, out, scratch, accumulate=False):
    """``out = a.sum(axis=0)`` (``out += ...`` with ``accumulate``); two launches.

    Parameters
    ----------
    a : (n, c) float32/float64, or float16/bfloat16 (uint16 bits), C-contiguous
    out : (c,) of ``a``'s dtype; float32 for 16-bit ``a`` (summed in float32)
    scratch : (S, c) of ``out``'s dtype, ``S >= 1`` (:func:`column_sum_scratch_shape`); its
        ``S`` fixes the order of the additions.

    Returns ``out``.
    """
    require_array("column_sum", "a", a)
    if a.ndim != 2:
        raise ValueError(f"column_sum: a must be 2-D, got shape {tuple(a.shape)}")
    c = a.shape[1]
    dtype = check("column_sum", {"a": (a, None)}, allowed=FLOAT_DTYPES + _HALF)
    acc = dtype if dtype in FLOAT_DTYPES else "float32"
    check("column_sum", {"out": (out, (c,)), "scratch": (scratch, None)}, dtype=acc)
    if scratch.ndim != 2 or scratch.shape[1] != c or scratch.shape[0] < 1:
        raise ValueError(f"column_sum: scratch must have shape (S, {c}) with S >= 1, got "
                         f"{tuple(scratch.shape)}; see column_sum_scratch_shape")
    if c == 0:
        return out
    stream = stream_for(a)
    grid, block = _grid(c, scratch.shape[0])
    KERNELS.compiled("column_sum_partial", dtype)[grid, block, stream](a, scratch)
    blocks, threads = grid_1d(c)
    KERNELS.compiled("column_sum_merge", acc)[blocks, threads, stream](
        scratch, out, int(bool(accumulate)))
    return out


def column_sums2_scratch_shape(n, c):
    """Shape ``(S, 2 c)`` of the scratch :func:`column_sums2` needs (``S`` as
    :func:`column_sum_scratch_shape`)."""
    slices, _ = column_sum_scratch_shape(n, c)
    return (slices, 2 * c)


def column_sums2(a, b, *, out, scratch, accumulate=False):
    """``out[:c] = a.sum(axis=0)``, ``out[c:] = (a * b).sum(axis=0)`` (``+=`` with
    ``accumulate``) without the ``a * b`` temporary; two launches, no atomics.

    Parameters
    ----------
    a, b : (n, c) float32/float64, C-contiguous, same dtype
    out : (2 c,) of ``a``'s dtype
    scratch : (S, 2 c) of ``a``'s dtype, ``S >= 1`` (:func:`column_sums2_scratch_shape`)

    Returns ``out``.
    """
    require_array("column_sums2", "a", a)
    if a.ndim != 2:
        raise ValueError(f"column_sums2: a must be 2-D, got shape {tuple(a.shape)}")
    n, c = a.shape
    check("column_sums2", {"a": (a, None), "b": (b, (n, c)), "out": (out, (2 * c,)),
                           "scratch": (scratch, None)})
    if scratch.ndim != 2 or scratch.shape[1] != 2 * c or scratch.shape[0] < 1:
        raise ValueError(f"column_sums2: scratch must have shape (S, {2 * c}) with S >= 1, "
                         f"got {tuple(scratch.shape)}; see column_sums2_scratch_shape")
    if c == 0:
        return out
    dtype = str(a.dtype)
    stream = stream_for(a)
    grid, block = _grid(c, scratch.shape[0])
    KERNELS.compiled("column_sums2_partial", dtype)[grid, block, stream](a, b, scratch)
    blocks, threads = grid_1d(2 * c)
    KERNELS.compiled("column_sum_merge", dtype)[blocks, threads, stream](
        scratch, out, int(bool(accumulate)))
    return out


__all__ = ["KERNELS", "column_sum", "column_sum_scratch_shape", "column_sums2",
           "column_sums2_scratch_shape"]
