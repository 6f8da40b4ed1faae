"""bfloat16 matrix products through oneDNN's matmul primitive (``libdnnl``), via ctypes.

oneDNN is the library PyTorch's CPU bfloat16 matmuls run on; its kernels are chosen by
CPU feature (AVX-512 BF16, AMX), whatever the vendor. The ``onednn-cpu-gomp`` wheel
(``pip install 'dualnn[onednn]'``: ~40 MB, 55 MB installed, x86-64 Linux) installs
``libdnnl.so.3`` built on GNU OpenMP, the runtime Numba's ``omp`` threading layer uses:
both share one pool and its wait policy.

Nothing is loaded when dualnn is imported; :func:`library` loads it once. :class:`Matmul`
keeps one primitive per (shapes, layouts, beta): a primitive is created the first time a
shape is met (milliseconds: oneDNN compiles its kernel) and reused at every later step.

Only what ``bf16_gemm`` needs is bound: ``dst (m, n) float32 = a (m, k) @ b (k, n)``
with ``a`` and ``b`` bfloat16 (their ``uint16`` bit patterns), each row-major or the
transpose of a row-major array, plus ``beta * dst`` (a "sum" post-op).
"""

from __future__ import annotations

import ctypes
import os
import threading

from .. import _libs
from .mkl import load_once

LIBRARY_VARIABLE = "DUALNN_DNNL_LIB"
"""Path of ``libdnnl`` to use instead of searching (empty string: pretend it is absent)."""
INSTALL_HINT = "pip install 'dualnn[onednn]' (the onednn-cpu-gomp wheel)"

# oneDNN's C API constants (dnnl_common_types.h, dnnl_types.h; stable across v3.x)
_CPU_ENGINE = 1
_STREAM_IN_ORDER = 1
_BF16, _F32 = 2, 3
_ARG_SRC, _ARG_DST, _ARG_WEIGHTS = 1, 17, 33
_SUCCESS = 0
_MAX_DIMS = 12
_RUNTIMES = {1: "sequential", 2: "OpenMP", 4: "TBB", 8: "threadpool"}

_Dims = ctypes.c_int64 * _MAX_DIMS
_Handle = ctypes.c_void_p


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint),
                ("gpu_runtime", ctypes.c_uint)]


class _ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", _Handle)]


class OneDnnError(RuntimeError):
    """A oneDNN call returned an error status."""


_lock = threading.Lock()
_state = {"checked": False, "lib": None, "path": None, "engine": None, "stream": None,
          "version": None, "runtime": None, "reason": None}


def find_library():
    """The path of ``libdnnl`` to load, or ``None``: :data:`LIBRARY_VARIABLE`, then the
    ``lib/`` folders of the Python environments (where the wheel puts it), then the
    dynamic linker's search path."""
    if LIBRARY_VARIABLE in os.environ:
        return os.environ[LIBRARY_VARIABLE] or None
    return _libs.find(("libdnnl.so.3", "libdnnl.so"), "dnnl")


def _check(status, what):
    if status != _SUCCESS:
        raise OneDnnError(f"oneDNN {what} failed with status {status}")


def _load():
    path = find_library()
    if path is None:
        _state["reason"] = f"oneDNN (libdnnl) not found: {INSTALL_HINT}"
        return
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
        lib.dnnl_version.restype = ctypes.POINTER(_Version)
        version = lib.dnnl_version().contents
        if version.major < 3:
            _state["reason"] = (f"{path}: oneDNN {version.major}.{version.minor} is older "
                                f"than 3.0; {INSTALL_HINT}")
            return
        engine, stream = _Handle(), _Handle()
        _check(lib.dnnl_engine_create(ctypes.byref(engine), _CPU_ENGINE, ctypes.c_size_t(0)),
               "engine creation")
        _check(lib.dnnl_stream_create(ctypes.byref(stream), engine,
                                      ctypes.c_uint(_STREAM_IN_ORDER)), "stream creation")
    except (OSError, AttributeError, OneDnnError) as exc:
        _state["reason"] = f"{path}: cannot load oneDNN ({exc})"
        return
    _state.update(lib=lib, path=path, engine=engine, stream=stream, reason=None,
                  version=f"{version.major}.{version.minor}.{version.patch}",
                  runtime=_RUNTIMES.get(version.cpu_runtime, hex(version.cpu_runtime)))


def library():
    """``(lib, reason)``: the loaded ``ctypes.CDLL`` of oneDNN, or ``None`` and why not.

    The first call loads it and creates its CPU engine and stream (thread-safe)."""
    load_once(_state, _lock, _load)
    return _state["lib"], _state["reason"]


def info():
    """``library`` (path), ``version``, ``runtime`` (its CPU threading runtime),
    ``reason`` (why not loaded, else ``None``). Loads oneDNN on the first call."""
    library()
    return {key: _state[key] for key in ("path", "version", "runtime", "reason")}


def _reset_for_tests():
    with _lock:
        _state.update(checked=False, lib=None, path=None, engine=None, stream=None,
                      version=None, runtime=None, reason=None)


def _memory_desc(lib, rows, cols, strides, data_type):
    desc = _Handle()
    _check(lib.dnnl_memory_desc_create_with_strides(
        ctypes.byref(desc), 2, _Dims(rows, cols), data_type, _Dims(*strides)),
        "memory descriptor creation")
    return desc


class _Primitive:
    """One matmul primitive and its three memory objects (pointed at new data per call)."""

    def __init__(self, lib, m, n, k, a_strides, b_strides, beta):
        engine = _state["engine"]
        descs = [_memory_desc(lib, m, k, a_strides, _BF16),
                 _memory_desc(lib, k, n, b_strides, _BF16),
                 _memory_desc(lib, m, n, (n, 1), _F32)]
        attr = _Handle()
        _check(lib.dnnl_primitive_attr_create(ctypes.byref(attr)), "attribute creation")
        if beta:
            post_ops = _Handle()
            _check(lib.dnnl_post_ops_create(ctypes.byref(post_ops)), "post-op creation")
            _check(lib.dnnl_post_ops_append_sum(post_ops, ctypes.c_float(beta),
                                                ctypes.c_int32(0), 0), "sum post-op")
            _check(lib.dnnl_primitive_attr_set_post_ops(attr, post_ops), "post-op attribute")
        desc = _Handle()
        self.primitive = _Handle()
        self.memories = []
        self.lib = lib
        try:
            _check(lib.dnnl_matmul_primitive_desc_create(
                ctypes.byref(desc), engine, descs[0], descs[1], None, descs[2], attr),
                f"matmul descriptor ({m}x{k} @ {k}x{n})")
            _check(lib.dnnl_primitive_create(ctypes.byref(self.primitive), desc),
                   "matmul primitive creation")
            for d in descs:
                memory = _Handle()
                _check(lib.dnnl_memory_create(ctypes.byref(memory), d, engine, None),
                       "memory creation")
                self.memories.append(memory)
        finally:  # the primitive and memories keep copies of what they need
            lib.dnnl_primitive_desc_destroy(desc)
            lib.dnnl_primitive_attr_destroy(attr)
            if beta:
                lib.dnnl_post_ops_destroy(post_ops)
            for d in descs:
                lib.dnnl_memory_desc_destroy(d)
        self.args = (_ExecArg * 3)(_ExecArg(_ARG_SRC, self.memories[0]),
                                   _ExecArg(_ARG_WEIGHTS, self.memories[1]),
                                   _ExecArg(_ARG_DST, self.memories[2]))

    def destroy(self):
        for memory in self.memories:
            self.lib.dnnl_memory_destroy(memory)
        self.lib.dnnl_primitive_destroy(self.primitive)
        self.memories = []


class Matmul:
    """bfloat16 x bfloat16 -> float32 products, one cached oneDNN primitive per problem.

    At most :attr:`capacity` primitives are kept (the least recently used goes first).
    Calls from several Python threads are serialized (a primitive's memory objects are
    pointed at each call's arrays)."""

    capacity = 64

    def __init__(self):
        self._primitives = {}
        self._lock = threading.Lock()

    def __call__(self, a, b, out, a_strides, b_strides, beta):
        """``out = a @ b + beta * out``: ``a`` (m, k), ``b`` (k, n) uint16 arrays whose
        element strides are ``a_strides``, ``b_strides``; ``out`` C-contiguous float32."""
        lib, reason = library()
        if lib is None:
            raise RuntimeError(f"oneDNN unavailable: {reason}")
        m, k = a.shape
        n = b.shape[1]
        key = (m, n, k, tuple(a_strides), tuple(b_strides), float(beta))
        with self._lock:
            prim = self._primitives.pop(key, None)
            if prim is None:
                prim = _Primitive(lib, m, n, k, a_strides, b_strides, beta)
                if len(self._primitives) >= self.capacity:
                    self._primitives.pop(next(iter(self._primitives))).destroy()
            self._primitives[key] = prim  # most recently used last
            for memory, array in zip(prim.memories, (a, b, out)):
                _check(lib.dnnl_memory_set_data_handle(memory, _Handle(array.ctypes.data)),
                       "set data handle")
            _check(lib.dnnl_primitive_execute(prim.primitive, _state["stream"], 3, prim.args),
                   "matmul execution")
            _check(lib.dnnl_stream_wait(_state["stream"]), "stream wait")
        return out
