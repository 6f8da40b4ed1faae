"""Softmax cross-entropy as Numba-CUDA kernels and their launcher.

Per row: stable log-sum-exp, the row's loss, ``dlogits``. From
``config.xent_warp_min_classes`` classes up one warp works on a row (lane ``j`` reads
columns ``j, j + 32, ...``: coalesced; warp-shuffle reductions for the max and the sum);
below, one thread per row (a warp would leave most lanes idle). Then a one-block
fixed-order tree for the mean (deterministic, no atomics). Mixed precision: float16
``logits``/``dlogits`` with float32 ``row_loss`` and ``loss`` (log-sum-exp and the mean in
float32; these take the one-thread-per-row kernel); bfloat16 logits/dlogits are uint16 bit
patterns.
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
    dtype_of,
    grid_stride,
    install_simulator_shuffle,
    is_cupy,
    numba_cuda,
    require_array,
    stream_for,
)
from ..ops import BF16_HALF_MINUS_ONE as _HALF_MINUS_ONE
from ..ops import BF16_SHIFT as _SHIFT
from ..ops import COMPUTE_DTYPE, FLOAT_DTYPES, LABEL_DTYPES
from ..ops import F32_ABS_BITS as _ABS
from ..ops import F32_INF_BITS as _INF
from ..ops import F32_QUIET_BIT as _QUIET

cuda = None
"""``numba.cuda`` once the kernels are made. A module global (not a closure variable)
because the kernels name it and the simulator swaps that global for its own."""

_SHARED_REDUCE = 256  # shared-memory slots of the one-block mean reduction (max block size)
WARP = 32
_FULL_MASK = 0xFFFFFFFF
_LANE_CLAMP = 0x1F  # shuffle within the whole 32-lane warp


SIGNATURES = {
    "softmax_cross_entropy_rows": "void({f}[:, ::1], {i}[::1], {f}[:, ::1], {a}[::1])",
    "softmax_cross_entropy_warp_rows": "void({f}[:, ::1], {i}[::1], {f}[:, ::1], {a}[::1])",
    "softmax_cross_entropy_mean": "void({a}[::1], {a}[::1])",
}
"""Explicit signature of each kernel below; ``{f}`` is the storage dtype of the logits and
``dlogits``, ``{a}`` the compute dtype (row losses and the loss: float32 in the float16
variant), ``{i}`` the label dtype."""

HALF_DTYPES = {"softmax_cross_entropy_rows": ("float16", "bfloat16")}
"""float16 or bfloat16 (uint16 bits) logits/dlogits, float32 sums and loss (the mean kernel
is the float32 one)."""

_ONE_BIT = np.uint32(1)


def _make_kernels(dtype_name):
    """The Python functions of this family's kernels for one float dtype."""
    global cuda
    cuda = numba_cuda()
    cast, zero, one, nan = dtype_constants(dtype_name)
    import numba

    shared_dtype = numba.from_dtype(np.dtype(COMPUTE_DTYPE[dtype_name]))
    if dtype_name == "bfloat16":
        return {"softmax_cross_entropy_rows": _make_bfloat16_rows()}
    minus_inf = cast(-np.inf)
    install_simulator_shuffle()

    def softmax_cross_entropy_rows(logits, labels, dlogits, row_loss):
        """One row per thread: stable log-sum-exp, the row's loss, ``dlogits / n``.

        A label outside ``[0, k)`` gives a NaN loss and NaN gradient row (never an
        out-of-bounds read).
        """
        n = logits.shape[0]
        k = logits.shape[1]
        nf = cast(n)
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, n, stride):
            label = labels[i]
            if label < 0 or label >= k:
                row_loss[i] = nan
                for j in range(k):
                    dlogits[i, j] = nan
                continue
            top = cast(logits[i, 0])
            for j in range(1, k):
                v = cast(logits[i, j])
                if v > top or v != v:  # noqa: PLR0124 - v != v: NaN propagates
                    top = v
            total = zero
            for j in range(k):
                total += math.exp(cast(logits[i, j]) - top)
            log_total = math.log(total)
            row_loss[i] = log_total - (cast(logits[i, label]) - top)
            for j in range(k):
                p = math.exp((cast(logits[i, j]) - top) - log_total)
                if j == label:
                    p -= one
                dlogits[i, j] = p / nf

    def softmax_cross_entropy_warp_rows(logits, labels, dlogits, row_loss):
        """One row per warp: lane ``j`` handles columns ``j, j + 32, ...`` of the row.

        Row max and sum of ``exp`` by xor-butterfly shuffles, so every lane ends with the
        same (bitwise) value; the grid-stride loop runs over warps, so all 32 lanes of a
        warp take the same trip count and always meet at the shuffles. The block size
        must be a multiple of 32. A label outside ``[0, k)`` gives a NaN row.
        """
        n = logits.shape[0]
        k = logits.shape[1]
        nf = cast(n)
        lane = cuda.threadIdx.x % WARP
        first = cuda.grid(1) // WARP
        warps = cuda.gridsize(1) // WARP
        for i in range(first, n, warps):
            label = labels[i]
            if label < 0 or label >= k:
                if lane == 0:
                    row_loss[i] = nan
                for j in range(lane, k, WARP):
                    dlogits[i, j] = nan
                continue
            top = minus_inf
            for j in range(lane, k, WARP):
                v = logits[i, j]
                if v > top or v != v:  # noqa: PLR0124 - v != v: NaN propagates
                    top = v
            offset = WARP // 2
            while offset > 0:
                other = cuda.shfl_xor_sync(_FULL_MASK, top, offset)
                if other > top or other != other:  # noqa: PLR0124 - NaN propagates
                    top = other
                offset //= 2
            total = zero
            for j in range(lane, k, WARP):
                total += math.exp(logits[i, j] - top)
            offset = WARP // 2
            while offset > 0:
                total += cuda.shfl_xor_sync(_FULL_MASK, total, offset)
                offset //= 2
            log_total = math.log(total)
            if lane == 0:
                row_loss[i] = log_total - (logits[i, label] - top)
            for j in range(lane, k, WARP):
                p = math.exp((logits[i, j] - top) - log_total)
                if j == label:
                    p -= one
                dlogits[i, j] = p / nf

    def softmax_cross_entropy_mean(row_loss, loss):
        """One block: ``loss[0] = sum(row_loss) / n`` by a fixed-order tree (deterministic)."""
        buf = cuda.shared.array(_SHARED_REDUCE, shared_dtype)
        t = cuda.threadIdx.x
        width = cuda.blockDim.x
        n = row_loss.shape[0]
        acc = zero
        for i in range(t, n, width):
            acc += row_loss[i]
        buf[t] = acc
        cuda.syncthreads()
        half = width // 2
        while half > 0:
            if t < half:
                buf[t] += buf[t + half]
            cuda.syncthreads()
            half //= 2
        if t == 0:
            loss[0] = buf[0] / cast(n)

    kernels = dict(locals())
    return {name: kernels[name] for name in SIGNATURES}


def _make_bfloat16_rows():
    """The rows kernel for bfloat16 logits/dlogits stored as uint16 bits, written out (a
    device function cannot be compiled to PTX without a GPU): each logit widened
    (``bits << 16``), float32 math, ``dlogits`` rounded to nearest even on store, NaN kept
    quiet (as :func:`dualnn.kernels.cast.reference.round_bfloat16`)."""
    zero = np.float32(0.0)
    one = np.float32(1.0)
    nan = np.float32(np.nan)
    f32 = np.float32
    u16 = np.uint16
    u32 = np.uint32
    nan_bits = u16(0x7FC0)
    as_float, as_bits = bit_casts()

    def softmax_cross_entropy_rows(logits, labels, dlogits, row_loss):
        """bfloat16 twin of the generic ``softmax_cross_entropy_rows``."""
        n = logits.shape[0]
        k = logits.shape[1]
        nf = f32(n)
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, n, stride):
            label = labels[i]
            if label < 0 or label >= k:
                row_loss[i] = nan
                for j in range(k):
                    dlogits[i, j] = nan_bits
                continue
            top = as_float(u32(logits[i, 0]) << _SHIFT)
            for j in range(1, k):
                v = as_float(u32(logits[i, j]) << _SHIFT)
                if v > top or v != v:  # noqa: PLR0124 - v != v: NaN propagates
                    top = v
            total = zero
            for j in range(k):
                total += math.exp(as_float(u32(logits[i, j]) << _SHIFT) - top)
            log_total = math.log(total)
            row_loss[i] = log_total - (as_float(u32(logits[i, label]) << _SHIFT) - top)
            for j in range(k):
                p = math.exp((as_float(u32(logits[i, j]) << _SHIFT) - top) - log_total)
                if j == label:
                    p -= one
                bits = u32(as_bits(p / nf))
                if (bits & _ABS) > _INF:
                    bits = bits | _QUIET
                else:
                    bits = bits + (_HALF_MINUS_ONE + ((bits >> _SHIFT) & _ONE_BIT))
                dlogits[i, j] = u16(bits >> _SHIFT)

    return softmax_cross_entropy_rows


KERNELS = KernelFamily(_make_kernels, SIGNATURES, HALF_DTYPES)
"""This family's kernels: signatures, Python functions, compiled kernels."""


def softmax_cross_entropy_scratch_shape(n):
    """Shape of the per-row loss scratch of :func:`softmax_cross_entropy`."""
    return (n,)


def softmax_cross_entropy_scratch(n, dtype):
    """``(shape, dtype name)`` of the per-row loss scratch for ``n`` rows of ``dtype``
    (float32 for float16 logits: losses are summed in float32)."""
    return (n,), COMPUTE_DTYPE.get(dtype, dtype)


def softmax_cross_entropy(logits, labels, *, loss, dlogits, row_loss):
    """Mean softmax cross-entropy and ``dL/dlogits``; see the reference twin.

    ``logits`` ``(n, k)``, ``labels`` int32/int64 ``(n,)``, ``loss`` a 0-d (or 1-element)
    array, ``dlogits`` ``(n, k)``, ``row_loss`` ``(n,)`` scratch
    (:func:`softmax_cross_entropy_scratch`); for float16 logits ``loss`` and ``row_loss``
    are float32 and ``dlogits`` float16. Labels are not checked
    against ``[0, k)`` on the host (that would sync the device); a bad label gives a NaN
    loss. Two launches: the rows (one warp per row from ``config.xent_warp_min_classes``
    classes up, else one thread per row), then a one-block fixed-order mean.

    Returns ``(loss, dlogits)``.
    """
    require_array("softmax_cross_entropy", "logits", logits)
    require_array("softmax_cross_entropy", "labels", labels)
    require_array("softmax_cross_entropy", "loss", loss)
    if logits.ndim != 2:
        raise ValueError(f"softmax_cross_entropy: logits must be 2-D, got shape "
                         f"{tuple(logits.shape)}")
    n, k = logits.shape
    if n == 0 or k == 0:
        raise ValueError(f"softmax_cross_entropy: empty logits of shape {(n, k)}")
    dtype = check("softmax_cross_entropy", {
        "logits": (logits, None), "dlogits": (dlogits, logits.shape)},
        allowed=FLOAT_DTYPES + ("float16", "bfloat16"))
    acc = COMPUTE_DTYPE[dtype]
    check("softmax_cross_entropy", {"row_loss": (row_loss, (n,))}, acc)
    if int(np.prod(loss.shape, dtype=np.int64)) != 1:
        raise ValueError(f"softmax_cross_entropy: loss must hold one element, got shape "
                         f"{tuple(loss.shape)}")
    check("softmax_cross_entropy", {"loss": (loss, None)}, acc)
    label_dtype = dtype_of(labels)
    if label_dtype not in LABEL_DTYPES:
        raise TypeError(f"softmax_cross_entropy: labels have dtype {label_dtype}, expected "
                        f"one of {LABEL_DTYPES}")
    if is_cupy(labels) != is_cupy(logits):
        raise TypeError("softmax_cross_entropy: labels and logits must come from one library")
    if tuple(labels.shape) != (n,) or not labels.flags.c_contiguous:
        raise ValueError(f"softmax_cross_entropy: labels must be a contiguous ({n},) array, "
                         f"got shape {tuple(labels.shape)}")
    stream = stream_for(logits)
    if k >= config.xent_warp_min_classes and dtype in ("float32", "float64"):
        name = "softmax_cross_entropy_warp_rows"
        threads = max(WARP, config.block // WARP * WARP)
        blocks, threads = grid_stride(n * WARP, threads)
    else:
        name = "softmax_cross_entropy_rows"
        blocks, threads = grid_stride(n)
    KERNELS.compiled(name, dtype, label_dtype)[blocks, threads, stream](
        logits, labels, dlogits, row_loss)
    width = 1
    while width * 2 <= min(n, config.reduce_block, _SHARED_REDUCE):
        width *= 2
    KERNELS.compiled("softmax_cross_entropy_mean", acc)[1, width, stream](
        row_loss, loss.reshape(1))
    return loss, dlogits

