"""bfloat16 GEMM with float32 accumulation on the CPU, through oneMKL's CBLAS.

``cblas_gemm_bf16bf16f32`` multiplies bfloat16 matrices (passed as their ``uint16`` bit
patterns: the upper half of a float32) and accumulates and writes float32. On a CPU with
AVX-512 BF16 or AMX-BF16 it runs ~2x faster than a float32 GEMM. NumPy's OpenBLAS has no
such routine, so the library comes from the ``mkl`` wheel (``pip install 'dualnn[cpu-bf16]'``).

Nothing is loaded when dualnn is imported: :func:`availability` (first asked by the
mixed-precision runner or ``dualnn info``) checks the CPU flags, finds ``libmkl_rt``,
chooses its threading layer and thread count (:func:`dualnn._threads.mkl_policy`) and
binds the function. :func:`gemm` is the call.

Shapes: ``a`` (m, k), ``b`` (k, n) uint16, each C-contiguous or the transpose of a
C-contiguous array (CBLAS's transpose flags handle it, nothing is copied); ``out`` (m, n)
float32 C-contiguous.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading

import numpy as np

from ..errors import ShapeError

ROW_MAJOR = 101
NO_TRANS = 111
TRANS = 112
CPU_FLAGS = ("avx512_bf16", "amx_bf16")
LIBRARY_VARIABLE = "DUALNN_MKL_RT"
"""Path of ``libmkl_rt`` to use instead of searching (empty string: pretend it is absent)."""
THREADING_LAYERS = {"intel": 0, "sequential": 1, "gnu": 3, "tbb": 4}
"""``MKL_Set_Threading_Layer`` codes (``mkl_service.h``)."""

_lock = threading.Lock()
_state = {"checked": False, "function": None, "reason": None, "library": None,
          "layer": None, "threads": None, "lib": None}


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


def find_library():
    """The path (or soname) of ``libmkl_rt`` to load, or ``None``.

    Looked for in :data:`LIBRARY_VARIABLE`, then the ``lib/`` folder of this Python's
    environment and of every environment on ``sys.path`` (where the ``mkl`` wheel puts
    it), then the dynamic linker's search path.
    """
    if LIBRARY_VARIABLE in os.environ:
        return os.environ[LIBRARY_VARIABLE] or None
    prefixes = [sys.prefix, sys.exec_prefix, sys.base_prefix]
    for entry in sys.path:  # <prefix>/lib/pythonX.Y/site-packages: layered environments
        parts = os.path.normpath(entry or ".").split(os.sep)
        if len(parts) > 3 and parts[-1] == "site-packages" and parts[-3] == "lib":
            prefixes.append(os.sep.join(parts[:-3]))
    for prefix in dict.fromkeys(prefixes):
        for name in ("libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so"):
            path = os.path.join(prefix, "lib", name)
            if os.path.exists(path):
                return path
    return ctypes.util.find_library("mkl_rt")


def _load():
    """Check, load and bind; fills ``_state``. Returns the bound function or ``None``."""
    flags = cpu_flags()
    if not flags & set(CPU_FLAGS):
        _state["reason"] = f"the CPU has neither {' nor '.join(CPU_FLAGS)}"
        return None
    path = find_library()
    if path is None:
        _state["reason"] = ("oneMKL (libmkl_rt) not found: pip install 'dualnn[cpu-bf16]' "
                            "(the mkl wheel)")
        return None
    from .. import _threads

    policy = _threads.mkl_policy()
    layer = _loadable_layer(policy["layer"], path)
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
        # the threading layer must be chosen before any other MKL call
        lib.MKL_Set_Interface_Layer.argtypes = [ctypes.c_int]
        lib.MKL_Set_Interface_Layer(0)  # LP64: 32-bit integers, as bound below
        lib.MKL_Set_Threading_Layer.argtypes = [ctypes.c_int]
        lib.MKL_Set_Threading_Layer.restype = ctypes.c_int
        lib.MKL_Set_Threading_Layer(THREADING_LAYERS[layer])
        lib.MKL_Set_Num_Threads.argtypes = [ctypes.c_int]
        lib.MKL_Set_Num_Threads.restype = None
        lib.MKL_Set_Num_Threads(int(policy["threads"]))
        lib.MKL_Get_Max_Threads.restype = ctypes.c_int
        fn = lib.cblas_gemm_bf16bf16f32
    except (OSError, AttributeError) as exc:
        _state["reason"] = f"{path}: cannot bind cblas_gemm_bf16bf16f32 ({exc})"
        return None
    u16 = ctypes.POINTER(ctypes.c_uint16)
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int,  # layout, transa, transb
                   ctypes.c_int, ctypes.c_int, ctypes.c_int,  # m, n, k (LP64 interface)
                   ctypes.c_float, u16, ctypes.c_int, u16, ctypes.c_int, ctypes.c_float,
                   ctypes.POINTER(ctypes.c_float), ctypes.c_int]
    fn.restype = None
    _state.update(function=fn, library=path, layer=layer,
                  threads=int(lib.MKL_Get_Max_Threads()), lib=lib, reason=None)
    return fn


_RUNTIMES = {"gnu": ("libgomp.so.1",), "intel": ("libiomp5.so",),
             "tbb": ("libtbb.so.12", "libtbb.so")}


def _loadable_layer(layer, path):
    """``layer``, or ``"sequential"`` when its runtime cannot be loaded.

    oneMKL ends the process ("FATAL ERROR: Cannot load libmkl_tbb_thread") when a threading
    layer's runtime is missing, so it is loaded here first, from the dynamic linker's path
    or next to ``libmkl_rt`` (where the wheels put libiomp5 and libtbb).
    """
    for name in _RUNTIMES.get(layer, ()):
        for candidate in (name, os.path.join(os.path.dirname(path), name)):
            try:
                ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
                return layer
            except OSError:
                continue
    return layer if layer == "sequential" else "sequential"


def availability():
    """``(available, reason)``: whether :func:`gemm` can run, else why not (a sentence).

    The first call loads oneMKL (thread-safe; later calls return the cached answer).
    """
    if not _state["checked"]:
        with _lock:
            if not _state["checked"]:
                _load()
                _state["checked"] = True
    return _state["function"] is not None, _state["reason"]


def available():
    """Whether :func:`gemm` can run here (loads oneMKL on the first call)."""
    return availability()[0]


def info():
    """What was loaded: ``library``, ``layer`` (MKL threading layer), ``threads``,
    ``reason`` (why unavailable, else ``None``)."""
    availability()
    return {k: _state[k] for k in ("library", "layer", "threads", "reason")}


def _reset_for_tests():
    """Forget the loaded state (the tests re-run the loader with a patched environment)."""
    with _lock:
        _state.update(checked=False, function=None, reason=None, library=None, layer=None,
                      threads=None, lib=None)


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
