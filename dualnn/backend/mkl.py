"""Loading oneMKL (``libmkl_rt`` from the ``mkl`` wheel) once, with dualnn's thread policy.

Both oneMKL paths of the NumPy backend go through :func:`library`: the float32/float64
GEMMs (:mod:`~dualnn.backend.mkl_gemm`) and the bfloat16 GEMM
(:mod:`~dualnn.backend.bf16_gemm`). Nothing is loaded when dualnn is imported; the first
call finds ``libmkl_rt``, sets its interface (LP64: 32-bit integers), threading layer and
thread count (:func:`dualnn._threads.mkl_policy`) before any other oneMKL call, and keeps
the handle.
"""

from __future__ import annotations

import ctypes
import os
import threading

from .. import _libs

LIBRARY_VARIABLE = "DUALNN_MKL_RT"
"""Path of ``libmkl_rt`` to use instead of searching (empty string: pretend it is absent)."""
THREADING_LAYERS = {"intel": 0, "sequential": 1, "gnu": 3, "tbb": 4}
"""``MKL_Set_Threading_Layer`` codes (``mkl_service.h``)."""
INSTALL_HINT = "pip install 'dualnn[mkl]' (the mkl wheel)"

_RUNTIMES = {"gnu": ("libgomp.so.1",), "intel": ("libiomp5.so",),
             "tbb": ("libtbb.so.12", "libtbb.so")}
_lock = threading.Lock()
_state = {"checked": False, "lib": None, "path": None, "layer": None, "threads": None,
          "reason": None}


def load_once(state, lock, loader):
    """Call ``loader()`` the first time only, thread-safely (a double-checked
    ``state["checked"]`` under ``lock``): the loaders of this module, ``mkl_gemm`` and
    ``bf16_gemm``."""
    if not state["checked"]:
        with lock:
            if not state["checked"]:
                loader()
                state["checked"] = True


def find_library():
    """The path (or soname) of ``libmkl_rt`` to load, or ``None``.

    Looked for in :data:`LIBRARY_VARIABLE`, then the ``lib/`` folder of this Python's
    environment and of every environment on ``sys.path`` (where the ``mkl`` wheel puts
    it), then the dynamic linker's search path.
    """
    if LIBRARY_VARIABLE in os.environ:
        return os.environ[LIBRARY_VARIABLE] or None
    return _libs.find(("libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so"), "mkl_rt")


def loadable_layer(layer, path):
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
    return "sequential"


def _load():
    path = find_library()
    if path is None:
        _state["reason"] = f"oneMKL (libmkl_rt) not found: {INSTALL_HINT}"
        return
    from .. import _threads

    policy = _threads.mkl_policy()
    layer = loadable_layer(policy["layer"], path)
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
        # the interface and threading layer must be chosen before any other MKL call
        lib.MKL_Set_Interface_Layer.argtypes = [ctypes.c_int]
        lib.MKL_Set_Interface_Layer(0)  # LP64
        lib.MKL_Set_Threading_Layer.argtypes = [ctypes.c_int]
        lib.MKL_Set_Threading_Layer.restype = ctypes.c_int
        lib.MKL_Set_Threading_Layer(THREADING_LAYERS[layer])
        lib.MKL_Set_Num_Threads.argtypes = [ctypes.c_int]
        lib.MKL_Set_Num_Threads.restype = None
        lib.MKL_Set_Num_Threads(int(policy["threads"]))
        lib.MKL_Get_Max_Threads.restype = ctypes.c_int
        threads = int(lib.MKL_Get_Max_Threads())
    except (OSError, AttributeError) as exc:
        _state["reason"] = f"{path}: cannot load oneMKL ({exc})"
        return
    _state.update(lib=lib, path=path, layer=layer, threads=threads, reason=None)


def library():
    """``(lib, reason)``: the loaded ``ctypes.CDLL`` of oneMKL, or ``None`` and why not.

    The first call loads it (thread-safe; later calls return the cached answer).
    """
    load_once(_state, _lock, _load)
    return _state["lib"], _state["reason"]


def info():
    """What was loaded: ``library`` (path), ``layer`` (threading layer), ``threads``,
    ``reason`` (why not loaded, else ``None``). Loads oneMKL on the first call."""
    library()
    return {"library": _state["path"], "layer": _state["layer"],
            "threads": _state["threads"], "reason": _state["reason"]}


def _reset_for_tests():
    """Forget the loaded state (the tests re-run the loader with a patched environment)."""
    with _lock:
        _state.update(checked=False, lib=None, path=None, layer=None, threads=None,
                      reason=None)
