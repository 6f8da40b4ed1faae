"""A pool of threads for NumPy's SIMD ufuncs (``exp``, ``expm1``, ``tanh``), fork-safe.

Numba's own ``exp``/``tanh`` calls go to the scalar C library (~12x slower per core than
NumPy's SIMD loops), so the sigmoid, tanh and ELU kernels take those functions from NumPy
between Numba passes. NumPy's loops run on one core and release the GIL: :func:`split_ufunc`
cuts a large array into one part per Numba thread and runs the parts at once.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from ._numba import FORWARD_PARALLEL_THRESHOLD

_ufunc_pool = None
_ufunc_pool_lock = threading.Lock()


def _forget_ufunc_pool():
    """In a forked child: the parent's pool threads do not exist there; start afresh."""
    global _ufunc_pool, _ufunc_pool_lock
    _ufunc_pool = None
    _ufunc_pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_ufunc_pool)


def _quiet_ufunc(ufunc, a, out):
    """``ufunc(a, out=out)`` without NumPy's overflow warning (``exp`` may overflow to inf
    by design; NumPy's error state is per thread, so it is set where the ufunc runs)."""
    with np.errstate(over="ignore"):
        ufunc(a, out=out)


def split_ufunc(ufunc, a, out=None):
    """``ufunc(a, out=out)`` (``out`` defaults to ``a``) on 1-D arrays, in contiguous parts
    on a pool of threads.

    NumPy's SIMD loops run on one core and release the GIL, so from
    :data:`FORWARD_PARALLEL_THRESHOLD` elements the array is cut into one part per Numba
    thread and the parts run at once (the pool's threads sleep between calls). Results are
    those of one call: the ufunc is elementwise.
    """
    global _ufunc_pool
    out = a if out is None else out
    parts = 1
    if a.size >= FORWARD_PARALLEL_THRESHOLD:
        import numba

        parts = numba.get_num_threads()
    if parts < 2:
        _quiet_ufunc(ufunc, a, out)
        return out
    if _ufunc_pool is None:
        with _ufunc_pool_lock:
            if _ufunc_pool is None:
                from concurrent.futures import ThreadPoolExecutor

                _ufunc_pool = ThreadPoolExecutor(parts, thread_name_prefix="dualnn-ufunc")
    bounds = [a.size * k // parts for k in range(parts + 1)]
    futures = [_ufunc_pool.submit(_quiet_ufunc, ufunc, a[lo:hi], out[lo:hi])
               for lo, hi in zip(bounds[:-1], bounds[1:])]
    for future in futures:
        future.result()
    return out



_scratch_arrays = threading.local()


def scratch(size, dtype):
    """A 1-D work array of ``size`` elements, reused by later calls from this thread."""
    arrays = _scratch_arrays.__dict__
    buffer = arrays.get(dtype)
    if buffer is None or buffer.size < size:
        buffer = arrays[dtype] = np.empty(size, dtype=dtype)
    return buffer[:size]
