"""Batch normalization (+ fused ReLU) as Numba-CUDA kernels and their launchers.

Reductions over the batch axis are deterministic: a 2-D grid in which each thread keeps
statistics over a fixed slice of rows for a slice of features, partial results in a
caller-allocated scratch buffer (:func:`batchnorm_scratch_shape`), then a merge pass
over the slices in a fixed order. No atomics. Mixed precision: ``x``/``out``/``dy`` may be
float16, or bfloat16 stored as uint16 bit patterns, while gamma, beta, the statistics, the
scratch and the gradients of gamma/beta are float32; every sum and the normalization run
in float32. bfloat16 elements are widened on load (``bits << 16`` is the float32) and
rounded to nearest even on store (NaN kept quiet), as
:func:`dualnn.kernels.cast.reference.round_bfloat16` rounds. The bfloat16 variants are the
same kernel bodies with the load/store branches chosen when the kernels are made (a shared
``cuda.jit(device=True)`` helper cannot be compiled to PTX without a GPU).
"""

from __future__ import annotations

import math

import numpy as np

from .._cuda import (
    KernelFamily,
    bit_casts,
    check,
    config,
    dtype_constants,
    flat,
    grid_1d,
    numba_cuda,
    require_array,
    stream_for,
)
from ..ops import BF16_HALF_MINUS_ONE as _HALF_MINUS_ONE
from ..ops import BF16_SHIFT as _SHIFT
from ..ops import COMPUTE_DTYPE, FLOAT_DTYPES
from ..ops import F32_ABS_BITS as _ABS
from ..ops import F32_INF_BITS as _INF
from ..ops import F32_QUIET_BIT as _QUIET

_DTYPES = FLOAT_DTYPES + ("float16", "bfloat16")
"""Storage dtypes of ``x``/``dy``/``out`` the launchers take (16-bit: float32 statistics;
bfloat16 as uint16 bit patterns)."""

_ONE_BIT = np.uint32(1)

cuda = None
"""``numba.cuda`` once the kernels are made. A module global (not a closure variable)
because the kernels name it and the simulator swaps that global for its own."""


SIGNATURES = {
    "batchnorm_forward_partial": "void({f}[:, ::1], {a}[:, :, ::1])",
    "batchnorm_forward_stats": ("void({f}[:, ::1], {a}[:, :, ::1], {a}, {a}, {a}, {a}, {a}[::1], "
                                "{a}[::1], {a}[::1], {a}[::1])"),
    "batchnorm_forward_apply": ("void({f}[::1], {a}[:, :, ::1], {a}[::1], {a}[::1], {a}[::1], "
                                "{f}[::1], int64, int32)"),
    "batchnorm_forward_eval": ("void({f}[::1], {a}[::1], {a}[::1], {a}[::1], {a}[::1], {a}, "
                               "{f}[::1], int64, int32)"),
    "batchnorm_backward_partial": ("void({f}[:, ::1], {f}[:, ::1], {a}[::1], {a}[::1], {a}[::1], "
                                   "{a}[::1], {a}[:, :, ::1], int32)"),
    "batchnorm_backward_sums": "void({a}[:, :, ::1], {a}[::1], {a}[::1])",
    "batchnorm_backward_apply": ("void({f}[::1], {f}[::1], {a}[::1], {a}[::1], {a}[::1], "
                                 "{a}[::1], {a}[::1], {a}[::1], {f}[::1], int64, {a}, int32)"),
}
"""Explicit signature of each kernel below; ``{f}`` is the storage dtype of ``x``, ``y``,
``dy`` and ``dx``, ``{a}`` the compute dtype of everything else (gamma/beta, statistics,
running statistics, scratch, scalars: float32 in the float16 variants)."""

HALF_DTYPES = {name: ("float16", "bfloat16") for name in SIGNATURES
               if name != "batchnorm_backward_sums"}
"""float16 and bfloat16 (uint16 bits) variants (``batchnorm_backward_sums`` only sees
float32 scratch: no variant)."""


def _make_kernels(dtype_name):
    """The Python functions of this family's kernels for one float dtype."""
    global cuda
    cuda = numba_cuda()
    cast, zero, one, nan = dtype_constants(dtype_name)
    # bfloat16: loads widen uint16 bits, stores round; the other branch is pruned at compile
    bf16 = dtype_name == "bfloat16"
    u16, u32 = np.uint16, np.uint32
    as_float, as_bits = bit_casts()

    def batchnorm_forward_partial(x, partial):
        """Welford mean/M2 of each (row slice, feature): ``partial[0|1, slice, feature]``.

        Slice ``r`` holds rows ``r, r + S, r + 2S, ...`` (``S = partial.shape[1]``), so
        adjacent threads read adjacent features of one row (coalesced). Values are shifted
        by the feature's first row (as the reference), so a mean far from zero costs no
        precision.
        """
        n = x.shape[0]
        c = x.shape[1]
        slices = partial.shape[1]
        f0, r0 = cuda.grid(2)
        fstride, rstride = cuda.gridsize(2)
        for f in range(f0, c, fstride):
            if bf16:
                shift = as_float(u32(x[0, f]) << _SHIFT)
            else:
                shift = cast(x[0, f])
            for r in range(r0, slices, rstride):
                count = zero
                mean = zero
                m2 = zero
                for i in range(r, n, slices):
                    if bf16:
                        v = as_float(u32(x[i, f]) << _SHIFT) - shift
                    else:
                        v = cast(x[i, f]) - shift
                    count += one
                    d = v - mean
                    mean += d / count
                    m2 += d * (v - mean)
                partial[0, r, f] = mean
                partial[1, r, f] = m2

    def batchnorm_forward_stats(x, partial, eps, momentum, keep, unbias, mean_out, invstd_out,
                                running_mean, running_var):
        """Merge the slices of each feature in order (Chan's formula); running statistics.

        ``keep = 1 - momentum``; ``unbias = n / (n - 1)``. The shifted mean and the shift
        are left in ``partial[0, 0, f]`` and ``partial[1, 0, f]`` for the normalize pass.
        """
        n = x.shape[0]
        slices = partial.shape[1]
        c = partial.shape[2]
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for f in range(start, c, stride):
            count = zero
            mean = zero
            m2 = zero
            for r in range(slices):
                rows = (n - r + slices - 1) // slices
                if rows > 0:
                    nb = cast(rows)
                    total = count + nb
                    d = partial[0, r, f] - mean
                    mean += d * (nb / total)
                    m2 += partial[1, r, f] + d * d * (count * nb / total)
                    count = total
            var = m2 / cast(n)
            if bf16:
                shift = as_float(u32(x[0, f]) << _SHIFT)
            else:
                shift = cast(x[0, f])
            partial[0, 0, f] = mean
            partial[1, 0, f] = shift
            mean = shift + mean
            mean_out[f] = mean
            invstd_out[f] = one / math.sqrt(var + eps)
            running_mean[f] = keep * running_mean[f] + momentum * mean
            running_var[f] = keep * running_var[f] + momentum * (var * unbias)

    def batchnorm_forward_apply(x, partial, invstd, gamma, beta, out, features, relu):
        """``out = (x - mean) * (invstd * gamma) + beta`` (then ``max(., 0)``), flat arrays.

        ``x - mean`` is formed as ``(x - shift) - shifted_mean`` with both saved in
        ``partial[:, 0, f]`` by the merge, so ``out`` may be ``x``.
        """
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, x.shape[0], stride):
            f = i % features
            if bf16:
                xi = as_float(u32(x[i]) << _SHIFT)
            else:
                xi = cast(x[i])
            centered = (xi - partial[1, 0, f]) - partial[0, 0, f]
            y = centered * (invstd[f] * gamma[f]) + beta[f]
            if relu and y < zero:  # NaN passes through, as torch.relu
                y = zero
            if bf16:
                bits = u32(as_bits(y))
                if (bits & _ABS) > _INF:
                    bits = bits | _QUIET
                else:
                    bits = bits + (_HALF_MINUS_ONE + ((bits >> _SHIFT) & _ONE_BIT))
                out[i] = u16(bits >> _SHIFT)
            else:
                out[i] = y

    def batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps, out, features,
                               relu):
        """``out = (x - rm) * gamma / sqrt(rv + eps) + beta`` (then ``max(., 0)``), flat."""
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, x.shape[0], stride):
            f = i % features
            scale = gamma[f] / math.sqrt(running_var[f] + eps)
            if bf16:
                xi = as_float(u32(x[i]) << _SHIFT)
            else:
                xi = cast(x[i])
            y = (xi - running_mean[f]) * scale + beta[f]
            if relu and y < zero:  # NaN passes through, as torch.relu
                y = zero
            if bf16:
                bits = u32(as_bits(y))
                if (bits & _ABS) > _INF:
                    bits = bits | _QUIET
                else:
                    bits = bits + (_HALF_MINUS_ONE + ((bits >> _SHIFT) & _ONE_BIT))
                out[i] = u16(bits >> _SHIFT)
            else:
                out[i] = y

    def batchnorm_backward_partial(dy, x, gamma, beta, mean, invstd, partial, relu):
        """Per (row slice, feature): ``partial[0] = sum dy``, ``partial[1] = sum dy * xhat``.

        With ``relu``, ``dy`` is masked where ``gamma * xhat + beta <= 0`` (recomputed).
        """
        n = x.shape[0]
        c = x.shape[1]
        slices = partial.shape[1]
        f0, r0 = cuda.grid(2)
        fstride, rstride = cuda.gridsize(2)
        for f in range(f0, c, fstride):
            mu = mean[f]
            istd = invstd[f]
            g = gamma[f]
            b = beta[f]
            for r in range(r0, slices, rstride):
                sum_dy = zero
                sum_dy_xhat = zero
                for i in range(r, n, slices):
                    if bf16:
                        xhat = (as_float(u32(x[i, f]) << _SHIFT) - mu) * istd
                        d = as_float(u32(dy[i, f]) << _SHIFT)
                    else:
                        xhat = (cast(x[i, f]) - mu) * istd
                        d = cast(dy[i, f])
                    if relu and not xhat * g + b > zero:
                        d = zero
                    sum_dy += d
                    sum_dy_xhat += d * xhat
                partial[0, r, f] = sum_dy
                partial[1, r, f] = sum_dy_xhat

    def batchnorm_backward_sums(partial, dgamma, dbeta):
        """Add the slices of each feature in order: ``dbeta``, ``dgamma``."""
        slices = partial.shape[1]
        c = partial.shape[2]
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for f in range(start, c, stride):
            sum_dy = zero
            sum_dy_xhat = zero
            for r in range(slices):
                sum_dy += partial[0, r, f]
                sum_dy_xhat += partial[1, r, f]
            dbeta[f] = sum_dy
            dgamma[f] = sum_dy_xhat

    def batchnorm_backward_apply(dy, x, gamma, beta, mean, invstd, dgamma, dbeta, out,
                                 features, n, relu):
        """``dx = gamma * invstd / n * (n * dy - dbeta - xhat * dgamma)``; ``out`` may be ``dy``."""
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, x.shape[0], stride):
            f = i % features
            istd = invstd[f]
            g = gamma[f]
            if bf16:
                xhat = (as_float(u32(x[i]) << _SHIFT) - mean[f]) * istd
                d = as_float(u32(dy[i]) << _SHIFT)
            else:
                xhat = (cast(x[i]) - mean[f]) * istd
                d = cast(dy[i])
            if relu and not xhat * g + beta[f] > zero:
                d = zero
            y = (g * istd / n) * (n * d - dbeta[f] - xhat * dgamma[f])
            if bf16:
                bits = u32(as_bits(y))
                if (bits & _ABS) > _INF:
                    bits = bits | _QUIET
                else:
                    bits = bits + (_HALF_MINUS_ONE + ((bits >> _SHIFT) & _ONE_BIT))
                out[i] = u16(bits >> _SHIFT)
            else:
                out[i] = y

    kernels = dict(locals())
    return {name: kernels[name] for name in SIGNATURES}


KERNELS = KernelFamily(_make_kernels, SIGNATURES, HALF_DTYPES)
"""This family's kernels: signatures, Python functions, compiled kernels."""


def batchnorm_scratch_shape(n, c):
    """Shape ``(2, S, c)`` of the scratch a batch-norm pass over ``(n, c)`` needs."""
    slices = max(1, min(-(-n // max(1, config.bn_rows_per_slice)), config.bn_max_slices, n))
    return (2, slices, c)


def bn_grid(c, slices):
    bx = max(1, min(config.bn_block_features, c))
    by = max(1, min(config.bn_block_slices, slices))
    return (-(-c // bx), -(-slices // by)), (bx, by)


def check_scratch(name, scratch, c):
    if scratch.ndim != 3 or scratch.shape[0] != 2 or scratch.shape[2] != c \
            or scratch.shape[1] < 1:
        raise ValueError(f"{name}: scratch must have shape (2, S, {c}) with S >= 1, got "
                         f"{tuple(scratch.shape)}; see batchnorm_scratch_shape")


def batchnorm_forward_train(x, gamma, beta, running_mean, running_var, eps, momentum,
                            relu=False, *, out, mean, invstd, scratch):
    """Training-mode batch norm; see :func:`dualnn.kernels.reference.batchnorm_forward_train`.

    Writes ``out`` (may be ``x``), ``mean``, ``invstd`` and updates ``running_mean`` and
    ``running_var`` in place. ``scratch`` has shape :func:`batchnorm_scratch_shape`; its
    ``S`` (row slices) fixes the reduction order, so results are deterministic for a given
    scratch shape. Three launches: per-slice Welford statistics of ``x - x[0]``, an ordered
    merge (mean, invstd, running statistics), normalize.

    Returns ``(out, mean, invstd)``.
    """
    require_array("batchnorm_forward_train", "x", x)
    if x.ndim != 2:
        raise ValueError(f"batchnorm_forward_train: x must be 2-D, got shape {tuple(x.shape)}")
    n, c = x.shape
    if n < 2:
        raise ValueError(f"batchnorm_forward_train: training needs at least 2 rows, got {n}")
    vec = (c,)
    dtype = check("batchnorm_forward_train", {"x": (x, None), "out": (out, x.shape)},
                  allowed=_DTYPES)
    check("batchnorm_forward_train", {
        "gamma": (gamma, vec), "beta": (beta, vec),
        "running_mean": (running_mean, vec), "running_var": (running_var, vec),
        "mean": (mean, vec), "invstd": (invstd, vec),
        "scratch": (scratch, None)}, COMPUTE_DTYPE[dtype])
    check_scratch("batchnorm_forward_train", scratch, c)
    if c == 0:
        return out, mean, invstd
    stream = stream_for(x)
    grid, block = bn_grid(c, scratch.shape[1])
    KERNELS.compiled("batchnorm_forward_partial", dtype)[grid, block, stream](x, scratch)
    blocks, threads = grid_1d(c)
    KERNELS.compiled("batchnorm_forward_stats", dtype)[blocks, threads, stream](
        x, scratch, eps, momentum, 1.0 - momentum, n / (n - 1), mean, invstd, running_mean,
        running_var)
    blocks, threads = grid_1d(n * c)
    KERNELS.compiled("batchnorm_forward_apply", dtype)[blocks, threads, stream](
        flat(x), scratch, invstd, gamma, beta, flat(out), c, int(bool(relu)))
    return out, mean, invstd


def batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps, relu=False, *, out):
    """Inference batch norm with the running statistics, one launch; ``out`` may be ``x``."""
    require_array("batchnorm_forward_eval", "x", x)
    if x.ndim != 2:
        raise ValueError(f"batchnorm_forward_eval: x must be 2-D, got shape {tuple(x.shape)}")
    n, c = x.shape
    vec = (c,)
    dtype = check("batchnorm_forward_eval", {"x": (x, None), "out": (out, x.shape)},
                  allowed=_DTYPES)
    check("batchnorm_forward_eval", {
        "gamma": (gamma, vec), "beta": (beta, vec),
        "running_mean": (running_mean, vec), "running_var": (running_var, vec)},
        COMPUTE_DTYPE[dtype])
    if n * c:
        blocks, threads = grid_1d(n * c)
        KERNELS.compiled("batchnorm_forward_eval", dtype)[blocks, threads, stream_for(x)](
            flat(x), gamma, beta, running_mean, running_var, eps, flat(out), c,
            int(bool(relu)))
    return out


def batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu=False, *, out, dgamma, dbeta,
                       scratch):
    """Batch-norm gradients; see :func:`dualnn.kernels.reference.batchnorm_backward`.

    Writes ``out`` (= dx, may be ``dy``), ``dgamma`` and ``dbeta``. Three launches: slice
    sums, ordered merge, dx. Returns ``(out, dgamma, dbeta)``.
    """
    require_array("batchnorm_backward", "x", x)
    if x.ndim != 2:
        raise ValueError(f"batchnorm_backward: x must be 2-D, got shape {tuple(x.shape)}")
    n, c = x.shape
    vec = (c,)
    dtype = check("batchnorm_backward", {
        "dy": (dy, x.shape), "x": (x, None), "out": (out, x.shape)}, allowed=_DTYPES)
    check("batchnorm_backward", {
        "gamma": (gamma, vec), "beta": (beta, vec),
        "mean": (mean, vec), "invstd": (invstd, vec),
        "dgamma": (dgamma, vec), "dbeta": (dbeta, vec), "scratch": (scratch, None)},
        COMPUTE_DTYPE[dtype])
    check_scratch("batchnorm_backward", scratch, c)
    if c == 0:
        return out, dgamma, dbeta
    stream = stream_for(x)
    relu = int(bool(relu))
    grid, block = bn_grid(c, scratch.shape[1])
    KERNELS.compiled("batchnorm_backward_partial", dtype)[grid, block, stream](
        dy, x, gamma, beta, mean, invstd, scratch, relu)
    blocks, threads = grid_1d(c)
    KERNELS.compiled("batchnorm_backward_sums", COMPUTE_DTYPE[dtype])[blocks, threads, stream](
        scratch, dgamma, dbeta)
    if n:
        blocks, threads = grid_1d(n * c)
        KERNELS.compiled("batchnorm_backward_apply", dtype)[blocks, threads, stream](
            flat(dy), flat(x), gamma, beta, mean, invstd, dgamma, dbeta, flat(out), c,
            float(n), relu)
    return out, dgamma, dbeta

