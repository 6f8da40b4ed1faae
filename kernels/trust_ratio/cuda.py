"""LARS and LAMB as Numba-CUDA kernels, with the launchers that check and start them.

Three launches per parameter, none reading a device value back to the host:

1. a grid-stride pass (``lamb_moments`` updates the moments; ``squared_norms`` only reads)
   in which each thread sums its squares, each block merges its threads' sums in thread
   order through shared memory, and writes them to ``partial[0|1, block]``;
2. ``trust_ratio_finalize``: one thread merges the block sums in block order and writes
   the ratio to ``ratio[0]`` (deterministic: no atomics);
3. an apply pass that reads ``ratio[0]`` on the device.

The kernels and their explicit signatures form :data:`KERNELS` (a
:class:`~dualnn.kernels._cuda.KernelFamily`), so :mod:`dualnn.kernels.cuda` lists them and
the tests compile every one to PTX. Launch geometry comes from
:data:`dualnn.kernels._cuda.config` (at most :data:`MAX_THREADS` threads per block).
Scratch (``partial``, ``ratio``) comes from the caller: :func:`scratch_shapes` says how
much.

Loss scaling follows :mod:`dualnn.kernels.optim.cuda`: the LAMB kernels take
``inv_scale`` (the gradient used, for the moments, ``r`` and the trust ratio, is
``grad * inv_scale[0]``), ``found_inf`` (every pass returns before writing when set) and
``skipped`` (bias corrections at ``step - skipped[0]``, computed in the kernels' dtype),
all device arrays of shape (1,); LARS's take ``found_inf``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .._cuda import (
    KernelFamily,
    check,
    config,
    dtype_constants,
    flat,
    grid_stride,
    numba_cuda,
    require_array,
    stream_for,
)

MAX_THREADS = 256
"""Threads per block at most: the shared-memory slots of the per-block merge."""

_LAMB, _LARS, _ONE = 0, 1, 2  # ratio kinds of trust_ratio_finalize

cuda = None
"""``numba.cuda`` once the kernels are made. A module global (not a closure variable)
because the kernels name it and the simulator swaps that global for its own."""

_SCALING = "{f}[::1], int32[::1], int32[::1]"  # inv_scale, found_inf, skipped

SIGNATURES = {
    "lamb_moments": ("void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}[:, ::1], {f}, {f}, {f}, "
                     "{f}, {f}, {f}, {f}, {f}, int32, " + _SCALING + ")"),
    "squared_norms": "void({f}[::1], {f}[::1], {f}[:, ::1])",
    "trust_ratio_finalize": "void({f}[:, ::1], {f}[::1], {f}, {f}, {f}, int32)",
    "lamb_apply": ("void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f}, {f}, {f}, {f}, "
                   "{f}, int32, int32[::1], int32[::1])"),
    "lars_apply": "void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f}, int32[::1])",
    "segmented_lamb_partials": ("void({f}[::1], {f}[::1], {f}[::1], {f}[::1], int64[:, ::1], "
                                "int64[:, ::1], {f}[:, ::1], {f}, {f}, {f}, {f}, {f}, {f}, {f}, "
                                "{f}, int32, " + _SCALING + ")"),
    "segmented_lars_partials": "void({f}[::1], {f}[::1], int64[:, ::1], {f}[:, ::1])",
    "segmented_finalize": ("void({f}[:, ::1], int64[:, ::1], {f}[::1], int32[::1], {f}, {f}, "
                           "{f}, int32, int32)"),
    "segmented_lamb_apply": ("void({f}[::1], {f}[::1], {f}[::1], {f}[::1], int64[:, ::1], "
                             "int64[:, ::1], {f}[::1], int32[::1], {f}, {f}, {f}, {f}, {f}, {f}, "
                             "{f}, {f}, {f}, {f}[::1], int32, int32, int32[::1])"),
    "segmented_lars_apply": ("void({f}[::1], {f}[::1], {f}[::1], int64[:, ::1], int64[:, ::1], "
                             "{f}[::1], {f}, {f}, {f}, int32[::1])"),
}
"""Explicit signature of each kernel below; ``{f}`` is the float dtype."""


def _make_kernels(dtype_name):
    """The Python functions of this family's kernels for one float dtype."""
    global cuda
    cuda = numba_cuda()
    import numba

    shared_type = numba.from_dtype(np.dtype(dtype_name))
    cast, zero, one, _nan = dtype_constants(dtype_name)

    def lamb_moments(param, grad, exp_avg, exp_avg_sq, partial, beta1, one_minus_beta1, beta2,
                     one_minus_beta2, host_bias_correction1, host_bias_correction2, eps,
                     weight_decay, step, inv_scale, found, skipped):
        """Update the moments; block sums of ``w^2`` and ``r^2`` into ``partial``.

        Uses ``grad * inv_scale[0]``; nothing when ``found[0]`` is set; the bias
        corrections are the host's unless ``skipped[0]`` steps were skipped (then those
        of ``step - skipped[0]``, in the kernel's dtype).
        """
        if found[0] != 0:
            return
        bias_correction1 = host_bias_correction1
        bias_correction2 = host_bias_correction2
        if skipped[0] != 0:
            t = cast(step - skipped[0])
            bias_correction1 = one - beta1 ** t
            bias_correction2 = one - beta2 ** t
        scale = inv_scale[0]
        w_sq = zero
        r_sq = zero
        for i in range(cuda.grid(1), param.shape[0], cuda.gridsize(1)):
            p = param[i]
            g = grad[i] * scale
            m = beta1 * exp_avg[i] + one_minus_beta1 * g
            v = beta2 * exp_avg_sq[i] + one_minus_beta2 * (g * g)
            exp_avg[i] = m
            exp_avg_sq[i] = v
            r = (m / bias_correction1) / (math.sqrt(v / bias_correction2) + eps) \
                + weight_decay * p
            w_sq += p * p
            r_sq += r * r
        # merge the block's per-thread sums in thread order into partial[:, block]
        sa = cuda.shared.array(MAX_THREADS, shared_type)
        sb = cuda.shared.array(MAX_THREADS, shared_type)
        tid = cuda.threadIdx.x
        sa[tid] = w_sq
        sb[tid] = r_sq
        cuda.syncthreads()
        if tid == 0:
            w_sq = zero
            r_sq = zero
            for j in range(cuda.blockDim.x):
                w_sq += sa[j]
                r_sq += sb[j]
            partial[0, cuda.blockIdx.x] = w_sq
            partial[1, cuda.blockIdx.x] = r_sq

    def squared_norms(a, b, partial):
        """Block sums of ``a^2`` and ``b^2`` into ``partial``."""
        a_sq = zero
        b_sq = zero
        for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
            a_sq += a[i] * a[i]
            b_sq += b[i] * b[i]
        sa = cuda.shared.array(MAX_THREADS, shared_type)
        sb = cuda.shared.array(MAX_THREADS, shared_type)
        tid = cuda.threadIdx.x
        sa[tid] = a_sq
        sb[tid] = b_sq
        cuda.syncthreads()
        if tid == 0:
            a_sq = zero
            b_sq = zero
            for j in range(cuda.blockDim.x):
                a_sq += sa[j]
                b_sq += sb[j]
            partial[0, cuda.blockIdx.x] = a_sq
            partial[1, cuda.blockIdx.x] = b_sq

    def trust_ratio_finalize(partial, ratio, trust_coefficient, weight_decay, eps, kind):
        """``ratio[0]``: LAMB ``||w||/||r||``, LARS ``eta||w||/(||g|| + wd||w|| + eps)``, or 1."""
        if cuda.grid(1) != 0:
            return
        w_sq = zero
        u_sq = zero
        for j in range(partial.shape[1]):
            w_sq += partial[0, j]
            u_sq += partial[1, j]
        w_norm = math.sqrt(w_sq)
        u_norm = math.sqrt(u_sq)
        if kind == _ONE or not (w_norm > zero and u_norm > zero):
            ratio[0] = one
        elif kind == _LAMB:
            ratio[0] = w_norm / u_norm
        else:
            ratio[0] = trust_coefficient * w_norm / (u_norm + weight_decay * w_norm + eps)

    def lamb_apply(param, exp_avg, exp_avg_sq, ratio, lr, host_bias_correction1,
                   host_bias_correction2, eps, weight_decay, beta1, beta2, step, found,
                   skipped):
        """``w -= lr * ratio[0] * r`` with ``r`` recomputed as in ``lamb_moments``; nothing
        when ``found[0]`` is set."""
        if found[0] != 0:
            return
        bias_correction1 = host_bias_correction1
        bias_correction2 = host_bias_correction2
        if skipped[0] != 0:
            t = cast(step - skipped[0])
            bias_correction1 = one - beta1 ** t
            bias_correction2 = one - beta2 ** t
        scale = lr * ratio[0]
        for i in range(cuda.grid(1), param.shape[0], cuda.gridsize(1)):
            p = param[i]
            r = (exp_avg[i] / bias_correction1) \
                / (math.sqrt(exp_avg_sq[i] / bias_correction2) + eps) + weight_decay * p
            param[i] = p - scale * r

    def lars_apply(param, grad, momentum_buffer, ratio, lr, momentum, weight_decay, skip):
        """``b = momentum b + ratio[0] (g + wd w)``, ``w -= lr b``; nothing when ``skip[0]``
        (a loss scaler's overflow flag) is set."""
        if skip[0] != 0:
            return
        local = ratio[0]
        for i in range(cuda.grid(1), param.shape[0], cuda.gridsize(1)):
            p = param[i]
            b = momentum * momentum_buffer[i] + local * (grad[i] + weight_decay * p)
            momentum_buffer[i] = b
            param[i] = p - lr * b

    # ---- segmented: several parameters in one flat buffer, one ratio per segment.
    # chunks[:, c] = (lo, hi, segment) of chunk c (chunks never straddle segments);
    # segments[:, s] = (first chunk, end chunk, adapt) of segment s.

    def segmented_lamb_partials(param, grad, exp_avg, exp_avg_sq, chunks, segments, partial,
                                beta1, one_minus_beta1, beta2, one_minus_beta2,
                                host_bias_correction1, host_bias_correction2, eps,
                                weight_decay, step, inv_scale, found, skipped):
        """Per chunk: sums of ``w^2``, ``r^2`` and the count of non-finite ``g`` into
        ``partial[:, chunk]`` (the moments are not stored: the apply pass recomputes them).
        Nothing when ``found[0]`` is already set (the apply pass skips too)."""
        if found[0] != 0:
            return
        bias_correction1 = host_bias_correction1
        bias_correction2 = host_bias_correction2
        if skipped[0] != 0:
            t = cast(step - skipped[0])
            bias_correction1 = one - beta1 ** t
            bias_correction2 = one - beta2 ** t
        unscale = inv_scale[0]
        sa = cuda.shared.array(MAX_THREADS, shared_type)
        sb = cuda.shared.array(MAX_THREADS, shared_type)
        sc = cuda.shared.array(MAX_THREADS, shared_type)
        tid = cuda.threadIdx.x
        for c in range(cuda.blockIdx.x, chunks.shape[1], cuda.gridDim.x):
            wd = weight_decay if segments[2, chunks[2, c]] != 0 else zero
            w_sq = zero
            r_sq = zero
            bad = zero
            for i in range(chunks[0, c] + tid, chunks[1, c], cuda.blockDim.x):
                p = param[i]
                g = grad[i] * unscale
                if math.isinf(g) or math.isnan(g):
                    bad += one
                m = beta1 * exp_avg[i] + one_minus_beta1 * g
                v = beta2 * exp_avg_sq[i] + one_minus_beta2 * (g * g)
                r = (m / bias_correction1) / (math.sqrt(v / bias_correction2) + eps) + wd * p
                w_sq += p * p
                r_sq += r * r
            sa[tid] = w_sq
            sb[tid] = r_sq
            sc[tid] = bad
            cuda.syncthreads()
            if tid == 0:
                w_sq = zero
                r_sq = zero
                bad = zero
                for j in range(cuda.blockDim.x):
                    w_sq += sa[j]
                    r_sq += sb[j]
                    bad += sc[j]
                partial[0, c] = w_sq
                partial[1, c] = r_sq
                partial[2, c] = bad
            cuda.syncthreads()

    def segmented_lars_partials(param, grad, chunks, partial):
        """Per chunk: sums of ``w^2`` and ``g^2`` into ``partial[0|1, chunk]``."""
        sa = cuda.shared.array(MAX_THREADS, shared_type)
        sb = cuda.shared.array(MAX_THREADS, shared_type)
        tid = cuda.threadIdx.x
        for c in range(cuda.blockIdx.x, chunks.shape[1], cuda.gridDim.x):
            w_sq = zero
            g_sq = zero
            for i in range(chunks[0, c] + tid, chunks[1, c], cuda.blockDim.x):
                w_sq += param[i] * param[i]
                g_sq += grad[i] * grad[i]
            sa[tid] = w_sq
            sb[tid] = g_sq
            cuda.syncthreads()
            if tid == 0:
                w_sq = zero
                g_sq = zero
                for j in range(cuda.blockDim.x):
                    w_sq += sa[j]
                    g_sq += sb[j]
                partial[0, c] = w_sq
                partial[1, c] = g_sq
                partial[2, c] = zero
            cuda.syncthreads()

    def segmented_finalize(partial, segments, ratio, found, trust_coefficient, weight_decay,
                           eps, kind, check_finite):
        """Per segment (one thread each): merge its chunks in order into ``ratio[s]``;
        with ``check_finite`` set ``found[0] = 1`` when a chunk counted a non-finite value
        (every writer writes the same 1)."""
        for s in range(cuda.grid(1), segments.shape[1], cuda.gridsize(1)):
            w_sq = zero
            u_sq = zero
            bad = zero
            for c in range(segments[0, s], segments[1, s]):
                w_sq += partial[0, c]
                u_sq += partial[1, c]
                bad += partial[2, c]
            if check_finite != 0 and bad > zero:
                found[0] = 1
            w_norm = math.sqrt(w_sq)
            u_norm = math.sqrt(u_sq)
            if segments[2, s] == 0 or not (w_norm > zero and u_norm > zero):
                ratio[s] = one
            elif kind == _LAMB:
                ratio[s] = w_norm / u_norm
            else:
                ratio[s] = trust_coefficient * w_norm / (u_norm + weight_decay * w_norm + eps)

    def segmented_lamb_apply(param, grad, exp_avg, exp_avg_sq, chunks, segments, ratio, found,
                             lr, beta1, one_minus_beta1, beta2, one_minus_beta2,
                             host_bias_correction1, host_bias_correction2, eps, weight_decay,
                             inv_scale, check_finite, step, skipped):
        """Store the moments, ``w -= lr * ratio[s] * r``; nothing when ``found[0]`` is set
        (with ``check_finite``)."""
        if check_finite != 0 and found[0] != 0:
            return
        bias_correction1 = host_bias_correction1
        bias_correction2 = host_bias_correction2
        if skipped[0] != 0:
            t = cast(step - skipped[0])
            bias_correction1 = one - beta1 ** t
            bias_correction2 = one - beta2 ** t
        unscale = inv_scale[0]
        for c in range(cuda.blockIdx.x, chunks.shape[1], cuda.gridDim.x):
            s = chunks[2, c]
            wd = weight_decay if segments[2, s] != 0 else zero
            scale = lr * ratio[s]
            for i in range(chunks[0, c] + cuda.threadIdx.x, chunks[1, c], cuda.blockDim.x):
                p = param[i]
                g = grad[i] * unscale
                m = beta1 * exp_avg[i] + one_minus_beta1 * g
                v = beta2 * exp_avg_sq[i] + one_minus_beta2 * (g * g)
                exp_avg[i] = m
                exp_avg_sq[i] = v
                r = (m / bias_correction1) / (math.sqrt(v / bias_correction2) + eps) + wd * p
                param[i] = p - scale * r

    def segmented_lars_apply(param, grad, momentum_buffer, chunks, segments, ratio, lr,
                             momentum, weight_decay, skip):
        """``b = momentum b + ratio[s] (g + wd w)``, ``w -= lr b`` (``wd`` 0 where not
        adapted); nothing when ``skip[0]`` (a loss scaler's overflow flag) is set."""
        if skip[0] != 0:
            return
        for c in range(cuda.blockIdx.x, chunks.shape[1], cuda.gridDim.x):
            s = chunks[2, c]
            wd = weight_decay if segments[2, s] != 0 else zero
            local = ratio[s]
            for i in range(chunks[0, c] + cuda.threadIdx.x, chunks[1, c], cuda.blockDim.x):
                p = param[i]
                b = momentum * momentum_buffer[i] + local * (grad[i] + wd * p)
                momentum_buffer[i] = b
                param[i] = p - lr * b

    kernels = dict(locals())
    return {name: kernels[name] for name in SIGNATURES}


KERNELS = KernelFamily(_make_kernels, SIGNATURES)
"""This family's kernels: signatures, Python functions, compiled kernels."""


def _grid(size):
    """``(blocks, threads)`` of a pass over ``size`` elements (threads <= MAX_THREADS)."""
    threads = max(1, min(config.block, MAX_THREADS, size))
    blocks = max(1, min(-(-size // threads), config.max_blocks))
    return blocks, threads


def scratch_shapes(size):
    """``(partial_shape, ratio_shape)`` of the scratch an op over ``size`` elements needs.

    Depends on the launch geometry (:data:`~dualnn.kernels._cuda.config`) at call time.
    """
    return (2, _grid(size)[0]), (1,)


def _checked(name, param, partial, ratio, **state):
    """``(dtype, size)`` once every array passed :func:`~dualnn.kernels._cuda.check`."""
    require_array(name, "param", param)
    size = int(np.prod(param.shape, dtype=np.int64))
    partial_shape, ratio_shape = scratch_shapes(size)
    arrays = {"param": (param, None)}
    arrays.update({label: (a, param.shape) for label, a in state.items()})
    arrays["partial"] = (partial, partial_shape)
    arrays["ratio"] = (ratio, ratio_shape)
    return check(name, arrays), size


def lamb_update(param, grad, exp_avg, exp_avg_sq, *, partial, ratio, step, lr, beta1=0.9,
                beta2=0.999, eps=1e-6, weight_decay=0.0, adapt=True, inv_scale=None,
                found_inf=None, skipped=None):
    """In-place LAMB step; see :func:`dualnn.kernels.trust_ratio.reference.lamb_update`.

    Parameters
    ----------
    param, grad, exp_avg, exp_avg_sq : device array, any shape (the same)
        ``param`` and the moments are updated in place.
    partial, ratio : device arrays of :func:`scratch_shapes` ``(param.size)``
        Scratch; ``ratio[0]`` holds the trust ratio used afterwards.
    inv_scale, found_inf, skipped : device arrays (1,), optional
        A loss scaler's ``1 / scale`` (``param``'s dtype; the kernels use
        ``grad * inv_scale[0]``, ``grad`` is not written), overflow flag (int32: when set
        nothing changes) and skipped-step count (int32: the bias corrections use
        ``step - skipped[0]``). No host read.
    """
    dtype, size = _checked("lamb_update", param, partial, ratio, grad=grad, exp_avg=exp_avg,
                           exp_avg_sq=exp_avg_sq)
    scale, found, skip_count = _scaling_arrays("lamb_update", param, inv_scale, found_inf,
                                               skipped)
    if size == 0:
        return
    stream = stream_for(param)
    blocks, threads = _grid(size)
    p, g, m, v = (flat(a) for a in (param, grad, exp_avg, exp_avg_sq))
    bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
    KERNELS.compiled("lamb_moments", dtype)[blocks, threads, stream](
        p, g, m, v, partial, beta1, 1 - beta1, beta2, 1 - beta2, bc1, bc2, eps, weight_decay,
        int(step), scale, found, skip_count)
    KERNELS.compiled("trust_ratio_finalize", dtype)[1, 1, stream](
        partial, ratio, 0.0, 0.0, 0.0, _LAMB if adapt else _ONE)
    KERNELS.compiled("lamb_apply", dtype)[blocks, threads, stream](
        p, m, v, ratio, lr, bc1, bc2, eps, weight_decay, beta1, beta2, int(step), found,
        skip_count)


def _scaling_arrays(name, param, inv_scale, found_inf, skipped):
    """``[inv_scale, found_inf, skipped]`` checked (arrays (1,) of ``param``'s library),
    cached neutral ones (1.0, 0, 0) for ``None``."""
    from ..optim.cuda import _scaling

    return _scaling(name, param, np.dtype(param.dtype).name, inv_scale, found_inf, skipped)


def _skip_flag(name, param, found_inf):
    """``found_inf`` checked (int32 (1,), ``param``'s library), or a cached zero flag."""
    from ..optim.cuda import _scaling

    return _scaling(name, param, np.dtype(param.dtype).name, None, found_inf, None)[1]


def lars_update(param, grad, momentum_buffer, *, partial, ratio, lr, momentum=0.9,
                weight_decay=0.0, trust_coefficient=0.001, eps=1e-8, adapt=True,
                found_inf=None):
    """In-place LARS step; see :func:`dualnn.kernels.trust_ratio.reference.lars_update`.

    Parameters
    ----------
    param, grad, momentum_buffer : device array, any shape (the same)
        ``param`` and ``momentum_buffer`` are updated in place.
    partial, ratio : device arrays of :func:`scratch_shapes` ``(param.size)``
        Scratch; ``ratio[0]`` holds the local rate used afterwards.
    found_inf : int32 device array (1,), optional
        A loss scaler's overflow flag: when set, nothing changes (no host read).
    """
    dtype, size = _checked("lars_update", param, partial, ratio, grad=grad,
                           momentum_buffer=momentum_buffer)
    skip = _skip_flag("lars_update", param, found_inf)
    if size == 0:
        return
    stream = stream_for(param)
    blocks, threads = _grid(size)
    p, g, b = (flat(a) for a in (param, grad, momentum_buffer))
    if adapt:
        KERNELS.compiled("squared_norms", dtype)[blocks, threads, stream](p, g, partial)
    KERNELS.compiled("trust_ratio_finalize", dtype)[1, 1, stream](
        partial, ratio, trust_coefficient, weight_decay, eps, _LARS if adapt else _ONE)
    KERNELS.compiled("lars_apply", dtype)[blocks, threads, stream](
        p, g, b, ratio, lr, momentum, weight_decay, skip)


# ------------------------------------------------------------ segmented (flat buffers)

CHUNK = 1024
"""Elements per chunk of the segmented kernels (one block merges one chunk's sums)."""


def segment_layout(offsets, adapt, chunk=CHUNK):
    """The host tables of a flat buffer split into segments, for the segmented launchers.

    Each segment is cut into chunks of at most ``chunk`` elements; chunks never straddle
    two segments, so one block's sums belong to one segment and a segment's sums merge in
    chunk order (deterministic, no atomics). Built once per packing; copy both tables to
    the device (``xp.asarray``) and keep them.

    Parameters
    ----------
    offsets : sequence of int (n + 1,)
        Segment ``s`` is ``[offsets[s], offsets[s + 1])``; rising from 0.
    adapt : sequence of bool (n,)
        Whether segment ``s`` gets the trust ratio and weight decay.
    chunk : int
        Elements per chunk (> 0).

    Returns
    -------
    chunks : ndarray int64 (3, n_chunks)
        ``(lo, hi, segment)`` of each chunk.
    segments : ndarray int64 (3, n)
        ``(first chunk, end chunk, adapt)`` of each segment (``first == end`` when empty).
    """
    offsets = [int(o) for o in np.asarray(offsets).reshape(-1)]
    adapt = [bool(a) for a in np.asarray(adapt).reshape(-1)]
    if (len(offsets) != len(adapt) + 1 or offsets[0] != 0
            or any(b < a for a, b in itertools.pairwise(offsets))):
        raise ValueError(f"segment_layout: offsets must rise from 0 with one entry more than "
                         f"adapt ({len(adapt)} flags); got {offsets}")
    if int(chunk) <= 0:
        raise ValueError(f"segment_layout: chunk must be > 0, got {chunk}")
    chunk = int(chunk)
    chunk_rows, segment_rows = [], []
    for s, (lo, hi) in enumerate(itertools.pairwise(offsets)):
        first = len(chunk_rows)
        chunk_rows.extend((a, min(a + chunk, hi), s) for a in range(lo, hi, chunk))
        segment_rows.append((first, len(chunk_rows), int(adapt[s])))
    chunks = np.array(chunk_rows, dtype=np.int64).reshape(-1, 3).T.copy()
    segments = np.array(segment_rows, dtype=np.int64).reshape(-1, 3).T.copy()
    return chunks, segments


def segmented_scratch_shapes(chunks, segments):
    """``(partial_shape, ratio_shape, found_shape)`` of the segmented launchers' scratch:
    ``partial`` and ``ratio`` of the parameters' dtype, ``found`` int32."""
    return (3, int(chunks.shape[1])), (int(segments.shape[1]),), (1,)


def _segmented_checked(name, param, chunks, segments, partial, ratio, found, **state):
    require_array(name, "param", param)
    if len(param.shape) != 1:
        raise ValueError(f"{name}: param must be a flat (1-D) buffer, got shape "
                         f"{tuple(param.shape)}")
    for label, table in (("chunks", chunks), ("segments", segments)):
        require_array(name, label, table)
        if len(table.shape) != 2 or table.shape[0] != 3 or np.dtype(table.dtype) != np.int64:
            raise ValueError(f"{name}: {label} must be an int64 (3, k) table from "
                             f"segment_layout, got {np.dtype(table.dtype)} "
                             f"{tuple(table.shape)}")
    partial_shape, ratio_shape, found_shape = segmented_scratch_shapes(chunks, segments)
    arrays = {"param": (param, None)}
    arrays.update({label: (a, param.shape) for label, a in state.items()})
    arrays["partial"] = (partial, partial_shape)
    arrays["ratio"] = (ratio, ratio_shape)
    dtype = check(name, arrays)
    require_array(name, "found", found)
    if np.dtype(found.dtype) != np.int32 or tuple(found.shape) != found_shape:
        raise ValueError(f"{name}: found must be int32 {found_shape}, got "
                         f"{np.dtype(found.dtype)} {tuple(found.shape)}")
    return dtype


def _segmented_grid(chunks):
    threads = max(1, min(config.block, MAX_THREADS))
    return grid_stride(int(chunks.shape[1]), threads)


def lamb_update_segmented(param, grad, exp_avg, exp_avg_sq, *, chunks, segments, partial,
                          ratio, found, step, lr, beta1=0.9, beta2=0.999, eps=1e-6,
                          weight_decay=0.0, inv_scale=None, check_finite=False, skipped=None):
    """In-place LAMB over flat buffers in three launches, whatever the segment count; see
    :func:`dualnn.kernels.trust_ratio.reference.lamb_update_segmented`.

    Launch 1 sums ``w^2``, ``r^2`` (and counts non-finite gradients) per chunk; launch 2
    merges each segment's chunks in order into ``ratio[s]``; launch 3 stores the moments
    and applies the step. Nothing is read back to the host.

    Parameters
    ----------
    param, grad, exp_avg, exp_avg_sq : device array (total,)
    chunks, segments : device int64 tables of :func:`segment_layout`
    partial, ratio, found : device scratch of :func:`segmented_scratch_shapes`
        ``ratio[s]`` holds segment ``s``'s trust ratio afterwards.
    inv_scale : device array (1,) of ``param``'s dtype, optional
        A loss scaler's ``1 / scale``; the kernels use ``grad * inv_scale[0]`` (``grad`` is
        not written).
    check_finite : bool
        ``found`` is a loss scaler's flag (``found_inf``): ``found[0]`` (int32) becomes 1
        when a scaled gradient is NaN/inf; when it is nonzero (set on entry or by this
        check) parameters and moments are left unchanged, as a loss scaler's skipped step.
        Without it ``found`` is scratch, neither read nor written.
    skipped : int32 device array (1,), optional
        Steps skipped before this one: the bias corrections use ``step - skipped[0]``
        (computed in the kernels' dtype when nonzero).
    """
    dtype = _segmented_checked("lamb_update_segmented", param, chunks, segments, partial,
                               ratio, found, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    finite = int(bool(check_finite))
    scale, zero_flag, skip_count = _scaling_arrays("lamb_update_segmented", param, inv_scale,
                                                   None, skipped)
    if int(chunks.shape[1]) == 0:
        return
    stream = stream_for(param)
    blocks, threads = _segmented_grid(chunks)
    bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
    KERNELS.compiled("segmented_lamb_partials", dtype)[blocks, threads, stream](
        param, grad, exp_avg, exp_avg_sq, chunks, segments, partial, beta1, 1 - beta1, beta2,
        1 - beta2, bc1, bc2, eps, weight_decay, int(step), scale,
        found if finite else zero_flag, skip_count)
    fblocks, fthreads = grid_stride(int(segments.shape[1]))
    KERNELS.compiled("segmented_finalize", dtype)[fblocks, fthreads, stream](
        partial, segments, ratio, found, 0.0, 0.0, 0.0, _LAMB, finite)
    KERNELS.compiled("segmented_lamb_apply", dtype)[blocks, threads, stream](
        param, grad, exp_avg, exp_avg_sq, chunks, segments, ratio, found, lr, beta1, 1 - beta1,
        beta2, 1 - beta2, bc1, bc2, eps, weight_decay, scale, finite, int(step), skip_count)


def lars_update_segmented(param, grad, momentum_buffer, *, chunks, segments, partial, ratio,
                          found, lr, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001,
                          eps=1e-8, found_inf=None):
    """In-place LARS over flat buffers in three launches, whatever the segment count; see
    :func:`dualnn.kernels.trust_ratio.reference.lars_update_segmented`.

    Parameters
    ----------
    param, grad, momentum_buffer : device array (total,)
    chunks, segments : device int64 tables of :func:`segment_layout`
    partial, ratio, found : device scratch of :func:`segmented_scratch_shapes`
        ``ratio[s]`` holds segment ``s``'s local rate afterwards; ``found`` is not read.
    found_inf : int32 device array (1,), optional
        A loss scaler's overflow flag: when set, nothing changes (no host read).
    """
    dtype = _segmented_checked("lars_update_segmented", param, chunks, segments, partial,
                               ratio, found, grad=grad, momentum_buffer=momentum_buffer)
    skip = _skip_flag("lars_update_segmented", param, found_inf)
    if int(chunks.shape[1]) == 0:
        return
    stream = stream_for(param)
    blocks, threads = _segmented_grid(chunks)
    KERNELS.compiled("segmented_lars_partials", dtype)[blocks, threads, stream](
        param, grad, chunks, partial)
    fblocks, fthreads = grid_stride(int(segments.shape[1]))
    KERNELS.compiled("segmented_finalize", dtype)[fblocks, fthreads, stream](
        partial, segments, ratio, found, trust_coefficient, weight_decay, eps, _LARS, 0)
    KERNELS.compiled("segmented_lars_apply", dtype)[blocks, threads, stream](
        param, grad, momentum_buffer, chunks, segments, ratio, lr, momentum, weight_decay,
        skip)
