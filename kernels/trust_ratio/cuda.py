"""LARS and LAMB as Numba-CUDA kernels, with the launchers that check and start them.

Three launches per parameter, none reading a device value back to the host:

1. a grid-stride pass (``lamb_moments`` updates the moments; ``squared_norms`` only reads)
   in which each thread sums its squares, each block merges its threads' sums in thread
   order through shared memory, and writes them to ``partial[0|1, block]``;
2. ``trust_ratio_finalize``: one thread merges the block sums in block order and writes
   the ratio to ``ratio[0]`` (deterministic: no atomics);
3. an apply pass that reads ``ratio[0]`` on the device.

Kernels are compiled lazily, once per float dtype, with the explicit signatures in
:data:`SIGNATURES`; ``cuda.compile_ptx(python_kernel(name, dtype), signature(name, dtype),
cc=(8, 0))`` compiles one without a GPU. With CuPy arrays they run on CuPy's current
stream unless a Numba ``stream`` is given; NumPy arrays run only under Numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``). Scratch (``partial``, ``ratio``) comes from the
caller: :func:`scratch_shapes` says how much.
"""

from __future__ import annotations

import math
import threading

import numpy as np

FLOAT_DTYPES = ("float32", "float64")
BLOCK = 256
"""Threads per block (also the shared-memory slots of the per-block merge)."""
MAX_BLOCKS = 1024
"""Cap on the blocks of a launch; larger parameters loop (grid-stride)."""

_LAMB, _LARS, _ONE = 0, 1, 2  # ratio kinds of trust_ratio_finalize

SIGNATURES = {
    "lamb_moments": ("void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}[:, ::1], {f}, {f}, {f}, "
                     "{f}, {f}, {f}, {f}, {f})"),
    "squared_norms": "void({f}[::1], {f}[::1], {f}[:, ::1])",
    "trust_ratio_finalize": "void({f}[:, ::1], {f}[::1], {f}, {f}, {f}, int32)",
    "lamb_apply": "void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f}, {f}, {f})",
    "lars_apply": "void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f})",
}
"""Explicit signature of each kernel; ``{f}`` is the float dtype."""

cuda = None
"""``numba.cuda`` once :func:`numba_cuda` ran (a global: the kernels name it)."""


def numba_cuda():
    """``numba.cuda`` (the simulator under ``NUMBA_ENABLE_CUDASIM=1``), imported on first use."""
    global cuda
    if cuda is None:
        from numba import cuda as module

        cuda = module
    return cuda


def simulator_enabled():
    """True when Numba runs CUDA kernels in its simulator."""
    from numba import config

    return bool(config.ENABLE_CUDASIM)


def _make_kernels(dtype_name):
    """The Python functions of the kernels for one float dtype (constants typed to it)."""
    numba_cuda()
    import numba

    cast = getattr(np, dtype_name)
    shared_type = numba.from_dtype(np.dtype(dtype_name))
    zero = cast(0.0)
    one = cast(1.0)

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
        sa = cuda.shared.array(BLOCK, shared_type)
        sb = cuda.shared.array(BLOCK, shared_type)
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
        # merge the block's per-thread sums in thread order into partial[:, block]
        sa = cuda.shared.array(BLOCK, shared_type)
        sb = cuda.shared.array(BLOCK, shared_type)
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

    found = dict(locals())
    return {name: found[name] for name in SIGNATURES}


def signature(name, dtype):
    """The explicit Numba signature string of kernel ``name`` for ``dtype``."""
    return SIGNATURES[name].format(f=dtype)


_python = {}
_compiled = {}
_lock = threading.Lock()


def python_kernel(name, dtype):
    """The uncompiled Python function of kernel ``name`` for ``dtype`` (for compile_ptx)."""
    if dtype not in _python:
        _python[dtype] = _make_kernels(dtype)
    return _python[dtype][name]


def compiled_kernel(name, dtype):
    """Kernel ``name`` compiled for its explicit ``dtype`` signature (once, then cached)."""
    key = (name, dtype)
    kernel = _compiled.get(key)
    if kernel is None:
        with _lock:
            kernel = _compiled.get(key)
            if kernel is None:
                kernel = numba_cuda().jit(signature(name, dtype))(python_kernel(name, dtype))
                _compiled[key] = kernel
    return kernel


# --------------------------------------------------------------------------- launch helpers

def _is_cupy(a):
    return type(a).__module__.split(".")[0] == "cupy"


_streams = {}


def default_stream(a):
    """CuPy's current stream (a cached Numba external stream) for CuPy arrays, else 0."""
    if not _is_cupy(a):
        return 0
    import cupy

    ptr = cupy.cuda.get_current_stream().ptr
    if ptr == 0:
        return 0
    stream = _streams.get(ptr)
    if stream is None:
        stream = _streams[ptr] = numba_cuda().external_stream(ptr)
    return stream


def grid(size):
    """``(blocks, threads)`` of a launch over ``size`` elements."""
    threads = BLOCK
    blocks = max(1, min(-(-size // threads), MAX_BLOCKS))
    return blocks, threads


def scratch_shapes(size):
    """``(partial_shape, ratio_shape)`` of the scratch an op over ``size`` elements needs."""
    return (2, grid(size)[0]), (1,)


def _check(name, param, **arrays):
    """Common dtype name after checking library, dtype, contiguity and shapes."""
    if not (_is_cupy(param) or isinstance(param, np.ndarray)):
        raise TypeError(f"{name}: param must be a CuPy array (or a NumPy array under the "
                        f"CUDA simulator), got {type(param).__name__}")
    if not _is_cupy(param) and not simulator_enabled():
        raise TypeError(f"{name}: NumPy arrays run only under the CUDA simulator "
                        "(NUMBA_ENABLE_CUDASIM=1); on a GPU pass CuPy arrays")
    dtype = np.dtype(param.dtype).name
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: param has dtype {dtype}, expected one of {FLOAT_DTYPES}")
    size = int(np.prod(param.shape, dtype=np.int64))
    partial_shape, ratio_shape = scratch_shapes(size)
    expected = {"partial": partial_shape, "ratio": ratio_shape}
    for label, a in (("param", param), *arrays.items()):
        if _is_cupy(a) != _is_cupy(param) or not hasattr(a, "dtype"):
            raise TypeError(f"{name}: {label} is a {type(a).__module__} array; all arrays "
                            "must come from one library")
        if np.dtype(a.dtype).name != dtype:
            raise TypeError(f"{name}: {label} has dtype {np.dtype(a.dtype).name}, "
                            f"expected {dtype}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name}: {label} must be C-contiguous")
        shape = expected.get(label, tuple(param.shape))
        if tuple(a.shape) != tuple(shape):
            raise ValueError(f"{name}: {label} has shape {tuple(a.shape)}, expected {shape}")
    return dtype, size


def lamb_update(param, grad, exp_avg, exp_avg_sq, *, partial, ratio, step, lr, beta1=0.9,
                beta2=0.999, eps=1e-6, weight_decay=0.0, adapt=True, stream=None):
    """In-place LAMB step; see :func:`dualnn.kernels.trust_ratio.reference.lamb_update`.

    Parameters
    ----------
    param, grad, exp_avg, exp_avg_sq : device array, any shape (the same)
    partial, ratio : device arrays of :func:`scratch_shapes` ``(size)``
        Scratch; ``ratio[0]`` holds the trust ratio used afterwards.
    stream : numba stream, optional
        Default: CuPy's current stream (0 under the simulator).
    """
    dtype, size = _check("lamb_update", param, grad=grad, exp_avg=exp_avg,
                         exp_avg_sq=exp_avg_sq, partial=partial, ratio=ratio)
    if size == 0:
        return
    stream = default_stream(param) if stream is None else stream
    blocks, threads = grid(size)
    flat = [a.reshape(-1) for a in (param, grad, exp_avg, exp_avg_sq)]
    bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
    compiled_kernel("lamb_moments", dtype)[blocks, threads, stream](
        *flat, partial, beta1, 1 - beta1, beta2, 1 - beta2, bc1, bc2, eps, weight_decay)
    compiled_kernel("trust_ratio_finalize", dtype)[1, 1, stream](
        partial, ratio, 0.0, 0.0, 0.0, _LAMB if adapt else _ONE)
    compiled_kernel("lamb_apply", dtype)[blocks, threads, stream](
        flat[0], flat[2], flat[3], ratio, lr, bc1, bc2, eps, weight_decay)


def lars_update(param, grad, momentum_buffer, *, partial, ratio, lr, momentum=0.9,
                weight_decay=0.0, trust_coefficient=0.001, eps=1e-8, adapt=True, stream=None):
    """In-place LARS step; see :func:`dualnn.kernels.trust_ratio.reference.lars_update`.

    Parameters
    ----------
    param, grad, momentum_buffer : device array, any shape (the same)
    partial, ratio : device arrays of :func:`scratch_shapes` ``(size)``
        Scratch; ``ratio[0]`` holds the local rate used afterwards.
    stream : numba stream, optional
        Default: CuPy's current stream (0 under the simulator).
    """
    dtype, size = _check("lars_update", param, grad=grad, momentum_buffer=momentum_buffer,
                         partial=partial, ratio=ratio)
    if size == 0:
        return
    stream = default_stream(param) if stream is None else stream
    blocks, threads = grid(size)
    p, g, b = (a.reshape(-1) for a in (param, grad, momentum_buffer))
    if adapt:
        compiled_kernel("squared_norms", dtype)[blocks, threads, stream](p, g, partial)
    compiled_kernel("trust_ratio_finalize", dtype)[1, 1, stream](
        partial, ratio, trust_coefficient, weight_decay, eps, _LARS if adapt else _ONE)
    compiled_kernel("lars_apply", dtype)[blocks, threads, stream](
        p, g, b, ratio, lr, momentum, weight_decay)
