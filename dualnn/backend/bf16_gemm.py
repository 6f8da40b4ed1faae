"""bfloat16 GEMM with float32 accumulation on the CPU: oneDNN's matmul or oneMKL's CBLAS.

The product multiplies bfloat16 matrices (passed as their ``uint16`` bit patterns: the
upper half of a float32) and accumulates and writes float32. On a CPU with AVX-512 BF16
or AMX-BF16 it runs ~2x faster than a float32 GEMM. NumPy's OpenBLAS has no such routine;
two trusted libraries do, each from an optional extra:

- ``onednn``: oneDNN's matmul primitive (:mod:`~dualnn.backend.onednn`), the library
  PyTorch's CPU bfloat16 matmuls run on. Its kernels are chosen by CPU feature, so it is
  fast on Intel and AMD alike; it is preferred when installed.
- ``mkl``: oneMKL's ``cblas_gemm_bf16bf16f32``. On Intel CPUs only: on an AMD EPYC
  (Zen 4, AVX-512 BF16) it measured slower than NumPy's float32 GEMM (docs' performance
  page), so there it is not used unless :data:`LIBRARY_VARIABLE` asks for it.

Nothing is loaded when dualnn is imported: :func:`availability` (first asked by the
mixed-precision runner or ``dualnn info``) checks the CPU flags, picks and loads the
library and binds the function. :func:`gemm` is the call.

Shapes: ``a`` (m, k), ``b`` (k, n) uint16, each C-contiguous or the transpose of a
C-contiguous array (both libraries take the layout as is, nothing is copied); ``out``
(m, n) float32 C-contiguous.
"""

from __future__ import annotations

import ctypes
import os
import threading

import numpy as np

from ..errors import ConfigurationError, ShapeError
from . import mkl, onednn
from .cpuinfo import cpu_flags, cpu_vendor

ROW_MAJOR = 101
NO_TRANS = 111
TRANS = 112
CPU_FLAGS = ("avx512_bf16", "amx_bf16")
LIBRARY_VARIABLE = "DUALNN_BF16_LIBRARY"
"""``onednn`` or ``mkl``: use that library (even where it is slow) instead of choosing."""
LIBRARIES = ("onednn", "mkl")
LIBRARY_NAMES = {"onednn": "oneDNN", "mkl": "oneMKL"}
_lock = threading.Lock()
_state = {"checked": False, "function": None, "library": None, "reason": None}


def _requested():
    """The library :data:`LIBRARY_VARIABLE` asks for, or ``None``."""
    value = os.environ.get(LIBRARY_VARIABLE, "").strip().lower()
    if value and value not in LIBRARIES:
        raise ConfigurationError(f"{LIBRARY_VARIABLE} must be one of {', '.join(LIBRARIES)}, "
                                 f"got {value!r}")
    return value or None


def _bind_mkl():
    """oneMKL's ``cblas_gemm_bf16bf16f32``, or ``(None, why)``."""
    lib, reason = mkl.library()
    if lib is None:
        return None, reason
    try:
        fn = lib.cblas_gemm_bf16bf16f32
    except AttributeError as exc:
        return None, (f"{mkl.info()['library']}: cannot bind cblas_gemm_bf16bf16f32 "
                      f"({exc})")
    u16 = ctypes.POINTER(ctypes.c_uint16)
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int,  # layout, transa, transb
                   ctypes.c_int, ctypes.c_int, ctypes.c_int,  # m, n, k (LP64 interface)
                   ctypes.c_float, u16, ctypes.c_int, u16, ctypes.c_int, ctypes.c_float,
                   ctypes.POINTER(ctypes.c_float), ctypes.c_int]
    fn.restype = None
    return fn, None


def _bind_onednn():
    """A :class:`onednn.Matmul`, or ``(None, why)``."""
    lib, reason = onednn.library()
    return (onednn.Matmul(), None) if lib is not None else (None, reason)


def _load():
    """Check the CPU, pick and load the library, bind; fills ``_state``."""
    flags = cpu_flags()
    if not flags & set(CPU_FLAGS):
        _state["reason"] = f"the CPU has neither {' nor '.join(CPU_FLAGS)}"
        return
    requested = _requested()
    binders = {"onednn": _bind_onednn, "mkl": _bind_mkl}
    if requested is not None:
        order = [requested]
    elif cpu_vendor() == "GenuineIntel":
        order = ["onednn", "mkl"]
    else:
        order = ["onednn"]
    reasons = []
    for name in order:
        fn, why = binders[name]()
        if fn is not None:
            _state.update(function=fn, library=name, reason=None)
            return
        reasons.append(why)
    if requested is None and "mkl" not in order:
        reasons.append(f"oneMKL's bfloat16 GEMM is not used on this {cpu_vendor() or 'non-Intel'}"
                       f" CPU (slower than float32 there; {LIBRARY_VARIABLE}=mkl forces it)")
    _state["reason"] = "; ".join(reasons)


def availability():
    """``(available, reason)``: whether :func:`gemm` can run, else why not (a sentence).

    The first call loads the library (thread-safe; later calls return the cached answer).
    """
    mkl.load_once(_state, _lock, _load)
    return _state["function"] is not None, _state["reason"]


def info():
    """What was loaded: ``name`` (``"onednn"``, ``"mkl"`` or ``None``), ``library``
    (path), ``layer`` (threading runtime), ``threads``, ``reason`` (why unavailable, else
    ``None``)."""
    availability()
    name = _state["library"]
    if name == "onednn":
        details = onednn.info()
        return {"name": name, "library": f"{details['path']} (oneDNN {details['version']})",
                "layer": details["runtime"], "threads": _omp_threads(), "reason": None}
    if name == "mkl":
        return dict(mkl.info(), name=name, reason=None)
    return {"name": None, "library": None, "layer": None, "threads": None,
            "reason": _state["reason"]}


def _omp_threads():
    """OpenMP's thread count (oneDNN's pool, the GNU runtime), ``None`` if unknown."""
    try:
        return int(ctypes.CDLL("libgomp.so.1").omp_get_max_threads())
    except (OSError, AttributeError):
        return None


def _reset_for_tests():
    """Forget the loaded state, oneMKL's too (the tests re-run the loader with a patched
    environment)."""
    with _lock:
        _state.update(checked=False, function=None, library=None, reason=None)
    mkl._reset_for_tests()
    onednn._reset_for_tests()


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
    if _state["library"] == "onednn":
        return _onednn_gemm(fn, a, b, out, (ta, lda), (tb, ldb), alpha, beta)
    u16 = ctypes.POINTER(ctypes.c_uint16)
    fn(ROW_MAJOR, ta, tb, m, n, k, alpha, a.ctypes.data_as(u16), lda,
       b.ctypes.data_as(u16), ldb, beta, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
       max(n, 1))
    return out


def _onednn_gemm(matmul, a, b, out, a_layout, b_layout, alpha, beta):
    """:func:`gemm` through oneDNN: the CBLAS (transpose, leading dimension) pairs become
    element strides; ``alpha != 1`` (never on the training path) scales a product."""
    strides = [(ld, 1) if trans == NO_TRANS else (1, ld) for trans, ld in (a_layout, b_layout)]
    if alpha == 1.0:
        return matmul(a, b, out, strides[0], strides[1], beta)
    product = matmul(a, b, np.empty_like(out), strides[0], strides[1], 0.0)
    if beta:
        out *= np.float32(beta)
        out += np.float32(alpha) * product
    else:
        np.multiply(product, np.float32(alpha), out=out)
    return out
