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
"""

from __future__ import annotations

import math

import numpy as np

from .._cuda import (
    KernelFamily,
    check,
    config,
    dtype_constants,
    flat,
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

SIGNATURES = {
    "lamb_moments": ("void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}[:, ::1], {f}, {f}, {f}, "
                     "{f}, {f}, {f}, {f}, {f})"),
    "squared_norms": "void({f}[::1], {f}[::1], {f}[:, ::1])",
    "trust_ratio_finalize": "void({f}[:, ::1], {f}[::1], {f}, {f}, {f}, int32)",
    "lamb_apply": "void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f}, {f}, {f})",
    "lars_apply": "void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f})",
}
"""Explicit signature of each kernel below; ``{f}`` is the float dtype."""


def _make_kernels(dtype_name):
    """The Python functions of this family's kernels for one float dtype."""
    global cuda
    cuda = numba_cuda()
    import numba

    shared_type = numba.from_dtype(np.dtype(dtype_name))
    _cast, zero, one, _nan = dtype_constants(dtype_name)

    def lamb_moments(param, grad, exp_avg, exp_avg_sq, partial, beta1, one_minus_beta1, beta2,
                     one_minus_beta2, bias_correction1, bias_correction2, eps, weight_decay):
        """Update the moments; block sums of ``w^2`` and ``r^2`` into ``partial``."""
        w_sq = zero
        r_sq = zero
        for i in range(cuda.grid(1), param.shape[0], cuda.gridsize(1)):
            p = param[i]
            g = grad[i]
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

    def lamb_apply(param, exp_avg, exp_avg_sq, ratio, lr, bias_correction1, bias_correction2,
                   eps, weight_decay):
        """``w -= lr * ratio[0] * r`` with ``r`` recomputed as in ``lamb_moments``."""
        scale = lr * ratio[0]
        for i in range(cuda.grid(1), param.shape[0], cuda.gridsize(1)):
            p = param[i]
            r = (exp_avg[i] / bias_correction1) \
                / (math.sqrt(exp_avg_sq[i] / bias_correction2) + eps) + weight_decay * p
            param[i] = p - scale * r

    def lars_apply(param, grad, momentum_buffer, ratio, lr, momentum, weight_decay):
        """``b = momentum b + ratio[0] (g + wd w)``, ``w -= lr b``."""
        local = ratio[0]
        for i in range(cuda.grid(1), param.shape[0], cuda.gridsize(1)):
            p = param[i]
            b = momentum * momentum_buffer[i] + local * (grad[i] + weight_decay * p)
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
                beta2=0.999, eps=1e-6, weight_decay=0.0, adapt=True):
    """In-place LAMB step; see :func:`dualnn.kernels.trust_ratio.reference.lamb_update`.

    Parameters
    ----------
    param, grad, exp_avg, exp_avg_sq : device array, any shape (the same)
        ``param`` and the moments are updated in place.
    partial, ratio : device arrays of :func:`scratch_shapes` ``(param.size)``
        Scratch; ``ratio[0]`` holds the trust ratio used afterwards.
    """
    dtype, size = _checked("lamb_update", param, partial, ratio, grad=grad, exp_avg=exp_avg,
                           exp_avg_sq=exp_avg_sq)
    if size == 0:
        return
    stream = stream_for(param)
    blocks, threads = _grid(size)
    p, g, m, v = (flat(a) for a in (param, grad, exp_avg, exp_avg_sq))
    bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
    KERNELS.compiled("lamb_moments", dtype)[blocks, threads, stream](
        p, g, m, v, partial, beta1, 1 - beta1, beta2, 1 - beta2, bc1, bc2, eps, weight_decay)
    KERNELS.compiled("trust_ratio_finalize", dtype)[1, 1, stream](
        partial, ratio, 0.0, 0.0, 0.0, _LAMB if adapt else _ONE)
    KERNELS.compiled("lamb_apply", dtype)[blocks, threads, stream](
        p, m, v, ratio, lr, bc1, bc2, eps, weight_decay)


def lars_update(param, grad, momentum_buffer, *, partial, ratio, lr, momentum=0.9,
                weight_decay=0.0, trust_coefficient=0.001, eps=1e-8, adapt=True):
    """In-place LARS step; see :func:`dualnn.kernels.trust_ratio.reference.lars_update`.

    Parameters
    ----------
    param, grad, momentum_buffer : device array, any shape (the same)
        ``param`` and ``momentum_buffer`` are updated in place.
    partial, ratio : device arrays of :func:`scratch_shapes` ``(param.size)``
        Scratch; ``ratio[0]`` holds the local rate used afterwards.
    """
    dtype, size = _checked("lars_update", param, partial, ratio, grad=grad,
                           momentum_buffer=momentum_buffer)
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
        p, g, b, ratio, lr, momentum, weight_decay)
