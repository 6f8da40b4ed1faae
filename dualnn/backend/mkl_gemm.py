"""float32 and float64 GEMMs through oneMKL's CBLAS, for the NumPy backend's ``matmul``.

On the training step's shapes oneMKL's ``cblas_sgemm`` ran about 1.1-1.2x faster than the
OpenBLAS NumPy ships with on an Intel Xeon, and 0.85-0.93x as fast on an AMD EPYC (Zen 4)
(measured side by side on the MLP's GEMMs, docs' performance page); the GEMMs are 80-85 %
of a CPU training step. So when the ``mkl`` wheel is installed
(``pip install 'dualnn[mkl]'``) and the CPU is an Intel one, the NumPy backend sends 2-D
float GEMMs that are big enough here; anything else (small products, where a ctypes call
costs more than it saves, batched or broadcast products, mixed dtypes, layouts CBLAS
cannot take without a copy) stays with ``np.matmul``, so results never depend on which
library is installed beyond rounding.

``DUALNN_MKL_GEMM=0`` switches the path off, ``DUALNN_MKL_GEMM=1`` on whatever the CPU
(read at each backend's creation).
"""

from __future__ import annotations

import ctypes
import os
import threading

import numpy as np

from . import mkl
from .cpuinfo import cpu_vendor

ROW_MAJOR = 101
NO_TRANS = 111
TRANS = 112
SWITCH_VARIABLE = "DUALNN_MKL_GEMM"
MIN_WORK = 1 << 22
"""Smallest ``m * n * k`` sent to oneMKL (e.g. 128x256x128): measured here, below about
128x128x128 the call's fixed cost (ctypes, waking the pool) outweighs the faster kernel."""

_lock = threading.Lock()
_state = {"checked": False, "functions": None, "reason": None}


def switched_off():
    """Whether :data:`SWITCH_VARIABLE` turns the path off."""
    return os.environ.get(SWITCH_VARIABLE, "").strip().lower() in ("0", "false", "no", "off")


def switched_on():
    """Whether :data:`SWITCH_VARIABLE` asks for the path whatever the CPU."""
    return os.environ.get(SWITCH_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


def wanted():
    """``(use, why)``: whether the NumPy backend should send its float GEMMs here (when
    oneMKL loads): :data:`SWITCH_VARIABLE` if set, else only on Intel CPUs."""
    if switched_off():
        return False, f"{SWITCH_VARIABLE}=0"
    if switched_on():
        return True, f"{SWITCH_VARIABLE}=1"
    vendor = cpu_vendor()
    if vendor != "GenuineIntel":
        return False, (f"oneMKL is slower than NumPy's BLAS on this {vendor or 'non-Intel'} "
                       f"CPU; {SWITCH_VARIABLE}=1 forces it")
    return True, "an Intel CPU"


def _load():
    lib, reason = mkl.library()
    if lib is None:
        _state["reason"] = reason
        return
    functions = {}
    for dtype, name, scalar in ((np.float32, "cblas_sgemm", ctypes.c_float),
                                (np.float64, "cblas_dgemm", ctypes.c_double)):
        fn = getattr(lib, name)
        ptr = ctypes.c_void_p
        fn.argtypes = [ctypes.c_int] * 6 + [scalar, ptr, ctypes.c_int, ptr, ctypes.c_int,
                                            scalar, ptr, ctypes.c_int]
        fn.restype = None
        functions[np.dtype(dtype)] = fn
    _state.update(functions=functions, reason=None)


def availability():
    """``(available, reason)``: whether :func:`gemm` can run, else why not (a sentence).
    The first call loads oneMKL (:func:`dualnn.backend.mkl.library`)."""
    mkl.load_once(_state, _lock, _load)
    return _state["functions"] is not None, _state["reason"]


def _reset_for_tests():
    with _lock:
        _state.update(checked=False, functions=None, reason=None)


def _layout(a):
    """(transpose flag, leading dimension) of a 2-D operand, or ``None`` when CBLAS
    cannot read it without a copy."""
    rows, cols = a.shape
    s0, s1 = (s // a.itemsize for s in a.strides)
    if s1 == 1 and s0 >= cols and a.strides[0] % a.itemsize == 0:
        return NO_TRANS, s0
    if s0 == 1 and s1 >= rows and a.strides[1] % a.itemsize == 0:
        return TRANS, s1
    return None


def takes(a, b, out=None):
    """Whether :func:`gemm` computes ``a @ b`` (into ``out``) here.

    True for two 2-D NumPy arrays of the same float32/float64 dtype, each C-contiguous
    rows or the transpose of them (any leading dimension), ``m * n * k`` at least
    :data:`MIN_WORK`, and ``out`` absent or a writeable C-contiguous array of the result's
    shape and dtype that does not overlap the operands.
    """
    if not (type(a) is np.ndarray and type(b) is np.ndarray and a.ndim == 2 and b.ndim == 2
            and a.dtype == b.dtype and a.dtype in (np.float32, np.float64)):
        return False
    m, k = a.shape
    if b.shape[0] != k or m * k * b.shape[1] < MIN_WORK:
        return False
    if out is not None and not (
            type(out) is np.ndarray and out.dtype == a.dtype and out.shape == (m, b.shape[1])
            and out.flags.c_contiguous and out.flags.writeable
            and not np.may_share_memory(out, a) and not np.may_share_memory(out, b)):
        return False
    return _layout(a) is not None and _layout(b) is not None and availability()[0]


def gemm(a, b, out=None, beta=0.0):
    """``out = a @ b + beta * out`` through oneMKL; the caller checked :func:`takes`.

    Parameters
    ----------
    a, b : ndarray, (m, k) and (k, n), float32 or float64
    out : ndarray, (m, n), optional
        New when ``None`` (``beta`` is then 0).
    beta : float

    Returns
    -------
    ndarray
    """
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        out = np.empty((m, n), a.dtype)
        beta = 0.0
    ta, lda = _layout(a)
    tb, ldb = _layout(b)
    if _state["functions"] is None:
        ok, reason = availability()
        if not ok:
            raise RuntimeError(f"oneMKL GEMM unavailable: {reason}")
    fn = _state["functions"][a.dtype]
    fn(ROW_MAJOR, ta, tb, m, n, k, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb, beta,
       out.ctypes.data, n)
    return out
