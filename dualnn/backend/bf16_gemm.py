"""bfloat16 GEMM with float32 accumulation on the CPU, through oneMKL's CBLAS.

``cblas_gemm_bf16bf16f32`` multiplies bfloat16 matrices (passed as their ``uint16`` bit
patterns: the upper half of a float32) and accumulates and writes float32. On a CPU with
AVX-512 BF16 or AMX-BF16 it runs ~2x faster than a float32 GEMM. NumPy's OpenBLAS has no
such routine, so the library comes from the ``mkl`` wheel (``pip install 'dualnn[mkl]'``).

Nothing is loaded when dualnn is imported: :func:`availability` (first asked by the
mixed-precision runner or ``dualnn info``) checks the CPU flags, loads oneMKL with
dualnn's threading layer and thread count (:func:`dualnn.backend.mkl.library`) and
binds the function. :func:`gemm` is the call.

Shapes: ``a`` (m, k), ``b`` (k, n) uint16, each C-contiguous or the transpose of a
C-contiguous array (CBLAS's transpose flags handle it, nothing is copied); ``out`` (m, n)
float32 C-contiguous.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from ..errors import ShapeError
from . import mkl

ROW_MAJOR = 101
NO_TRANS = 111
TRANS = 112
CPU_FLAGS = ("avx512_bf16", "amx_bf16")
_lock = threading.Lock()
_state = {"checked": False, "function": None, "reason": None}


def cpu_flags():
    """The CPU's feature flags (``/proc/cpuinfo``), as a set; empty when unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def _load():
    """Check the CPU, load oneMKL (:func:`mkl.library`) and bind; fills ``_state``."""
    flags = cpu_flags()
    if not flags & set(CPU_FLAGS):
        _state["reason"] = f"the CPU has neither {' nor '.join(CPU_FLAGS)}"
        return
    lib, reason = mkl.library()
    if lib is None:
        _state["reason"] = reason
        return
    try:
        fn = lib.cblas_gemm_bf16bf16f32
    except AttributeError as exc:
        _state["reason"] = f"{mkl.info()['library']}: cannot bind cblas_gemm_bf16bf16f32 ({exc})"
        return
    u16 = ctypes.POINTER(ctypes.c_uint16)
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int,  # layout, transa, transb
                   ctypes.c_int, ctypes.c_int, ctypes.c_int,  # m, n, k (LP64 interface)
                   ctypes.c_float, u16, ctypes.c_int, u16, ctypes.c_int, ctypes.c_float,
                   ctypes.POINTER(ctypes.c_float), ctypes.c_int]
    fn.restype = None
    _state.update(function=fn, reason=None)


def availability():
    """``(available, reason)``: whether :func:`gemm` can run, else why not (a sentence).

    The first call loads oneMKL (thread-safe; later calls return the cached answer).
    """
    mkl.load_once(_state, _lock, _load)
    return _state["function"] is not None, _state["reason"]


def info():
    """What was loaded: ``library``, ``layer`` (MKL threading layer), ``threads``,
    ``reason`` (why unavailable, else ``None``)."""
    availability()
    return dict(mkl.info(), reason=_state["reason"])


def _reset_for_tests():
    """Forget the loaded state, oneMKL's too (the tests re-run the loader with a patched
    environment)."""
    with _lock:
        _state.update(checked=False, function=None, reason=None)
    mkl._reset_for_tests()


def _operand(name, a, rows, cols):
    """(transpose flag, leading dimension) of a uint16 (rows, cols) operand."""
    if not isinstance(a, np.ndarray) or a.dtype != np.uint16 or a.ndim != 2:
        raise ShapeError(f"gemm: {name} must be a 2-D uint16 (bfloat16 bits) NumPy array, "
                         f"got {getattr(a, 'dtype', type(a).__name__)} "
                         f"{getattr(a, 'shape', '')}")
    if a.shape != (rows, cols):
        raise ShapeError(f"gemm: {name} must have shape {(rows, cols)}, got {a.shape}")
    if a.size == 0:
        return NO_TRANS, max(cols, 1)
    s0, s1 = (s // 2 for s in a.strides)
    if (s1 == 1 or cols == 1) and s0 >= max(cols, 1):
        return NO_TRANS, max(s0, cols, 1)
    if (s0 == 1 or rows == 1) and s1 >= max(rows, 1):
        return TRANS, max(s1, rows, 1)
    raise ShapeError(f"gemm: {name} must be C-contiguous rows or the transpose of them "
                     f"(strides {a.strides} for shape {a.shape}); copy it first")


def gemm(a, b, out=None, alpha=1.0, beta=0.0):
    """``out = alpha * a @ b + beta * out`` with bfloat16 inputs and float32 accumulation.

    Parameters
    ----------
    a : ndarray, uint16, shape (m, k)
        bfloat16 bit patterns; C-contiguous rows, or the transpose of a C-contiguous array.
    b : ndarray, uint16, shape (k, n)
        The same for the second operand.
    out : ndarray, float32, shape (m, n), C-contiguous, optional
        Written (``beta=0``) or accumulated into (``beta=1``); new when ``None``.
    alpha, beta : float

    Returns
    -------
    ndarray, float32, shape (m, n)

    Raises
    ------
    ShapeError
        Wrong dtypes, shapes or layouts (no copy is made here).
    RuntimeError
        The GEMM is not available (see :func:`availability`).
    """
    fn = _state["function"]
    if fn is None:
        ok, reason = availability()
        if not ok:
            raise RuntimeError(f"bfloat16 GEMM unavailable: {reason}")
        fn = _state["function"]
    if getattr(a, "ndim", 0) != 2 or getattr(b, "ndim", 0) != 2:
        raise ShapeError(f"gemm: a and b must be 2-D, got shapes {getattr(a, 'shape', None)} "
                         f"and {getattr(b, 'shape', None)}")
    m, k = a.shape
    n = b.shape[1]
    ta, lda = _operand("a", a, m, k)
    tb, ldb = _operand("b", b, k, n)
    if out is None:
        out = np.empty((m, n), np.float32)
        beta = 0.0
    elif (not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (m, n)
          or not out.flags.c_contiguous or not out.flags.writeable):
        raise ShapeError(f"gemm: out must be a writeable C-contiguous float32 array of shape "
                         f"{(m, n)}, got {getattr(out, 'dtype', type(out).__name__)} "
                         f"{getattr(out, 'shape', '')}")
    if m == 0 or n == 0:
        return out
    if k == 0:
        out *= beta
        return out
    u16 = ctypes.POINTER(ctypes.c_uint16)
    fn(ROW_MAJOR, ta, tb, m, n, k, alpha, a.ctypes.data_as(u16), lda,
       b.ctypes.data_as(u16), ldb, beta, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
       max(n, 1))
    return out
