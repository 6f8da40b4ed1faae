"""The double's ``cupy`` module: NumPy compute, real CuPy 14 call signatures.

Every public function is looked up on the *real* CuPy (installed, importable without a
GPU) when dualnn first touches it:

- a name real CuPy lacks raises ``AttributeError``, as on a GPU machine;
- a function with an inspectable signature binds its arguments with
  ``inspect.signature(real).bind(*args, **kwargs)`` before anything runs, so a
  NumPy-only keyword (``cupy.clip(a, min=...)``) raises ``TypeError`` here as on a GPU;
- a CuPy ufunc (no inspectable signature) checks its argument count (``nin`` inputs,
  up to ``nout`` outputs) and CuPy's keywords (``out``, ``dtype``, ``casting``);
- NumPy arrays among the arguments raise ``TypeError`` ("Unsupported type"), except in
  the host-transfer functions (``asarray``, ``array``, ``asnumpy``);
- the computation is NumPy's function of the same name on the wrapped arrays, and the
  results come back as double arrays (see :mod:`.fake_ndarray`).

:func:`install` puts the double into ``sys.modules["cupy"]`` (and its submodules); it
must run before dualnn first imports cupy. The only thing patched inside dualnn is the
simulator launch hook ``dualnn.kernels._cuda._simulated_device_array``, so that Numba's
simulator, which accepts NumPy arrays but neither ``__cuda_array_interface__`` nor
DLPack objects, receives the NumPy memory behind a double array (``launch_array()``).
"""

from __future__ import annotations

import inspect
import sys
import types

import numpy as np

from . import counters, fake_cublas, fake_cuda, fake_random
from .fake_ndarray import ndarray, operand, quiet, unsupported, unwrap_tree, wrap, wrap_result

_UFUNC_KEYWORDS = frozenset({"out", "dtype", "casting"})
_real = None
module = None
"""The installed double module (``sys.modules["cupy"]`` while installed)."""


def real_cupy():
    """The real CuPy module (imported once, kept aside from ``sys.modules``)."""
    global _real
    if _real is None:
        saved = {k: v for k, v in sys.modules.items() if k == "cupy" or k.startswith("cupy.")}
        for key in saved:
            del sys.modules[key]
        import cupy as real

        _real = real
        for key in [k for k in sys.modules if k == "cupy" or k.startswith("cupy.")]:
            del sys.modules[key]
        sys.modules.update(saved)
    return _real


def is_pinned(host):
    """Whether a NumPy array's memory comes from :func:`fake_cuda.alloc_pinned_memory`."""
    base = host
    while base is not None:
        if isinstance(base, fake_cuda.PinnedMemoryPointer):
            return True
        base = getattr(base, "base", None) if isinstance(base, np.ndarray) else getattr(
            base, "obj", None)
    return False


def _record_h2d(host):
    counters.record("h2d")
    if not (isinstance(host, np.ndarray) and is_pinned(host)):
        counters.record("h2d_pageable")


# ------------------------------------------------------------------------ host transfers

def _asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    if isinstance(a, ndarray):
        if copy:
            return wrap(np.array(a._a, dtype=dtype, order=order or "K", copy=True))
        if dtype is None or np.dtype(dtype) == a.dtype:
            return a
        return wrap(a._a.astype(dtype))
    _record_h2d(a)
    return wrap(np.array(a, dtype=dtype, order=order or "K", copy=True))


def _array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    if isinstance(obj, ndarray):
        if not copy and (dtype is None or np.dtype(dtype) == obj.dtype):
            return obj
        return wrap(np.array(obj._a, dtype=dtype, order=order, ndmin=ndmin, copy=True))
    _record_h2d(obj)
    return wrap(np.array(obj, dtype=dtype, order=order, ndmin=ndmin, copy=True))


def _asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    if isinstance(a, ndarray):
        return a.get(stream=stream, order=order, out=out, blocking=blocking)
    return np.asarray(a, order=order)


def _ascontiguousarray(a, dtype=None):
    if not isinstance(a, ndarray):
        raise TypeError(f"Argument 'a' has incorrect type (expected cupy.ndarray, got "
                        f"{type(a).__name__})")
    if a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    return wrap(np.ascontiguousarray(a._a, dtype=dtype))


def _nonzero(a):
    counters.record("sync")
    return wrap_result(np.nonzero(operand(a)))


_OWN = {"asarray": _asarray, "array": _array, "asanyarray": _asarray, "asnumpy": _asnumpy,
        "ascontiguousarray": _ascontiguousarray, "nonzero": _nonzero}
"""Functions the double implements itself (transfers and syncs); the rest run NumPy's."""

_SYNCING = frozenset({"unique", "argwhere", "flatnonzero", "compress", "extract"})
"""Functions whose output size is data: CuPy reads back to the host to size it."""


def _is_ufunc(real):
    return type(real).__name__ == "ufunc" and type(real).__module__.startswith("cupy")


def _check_ufunc_call(name, real, args, kwargs):
    if not real.nin <= len(args) <= real.nin + real.nout:
        raise TypeError(f"cupy.{name}: wrong number of arguments (takes {real.nin} inputs"
                        f" and up to {real.nout} outputs, got {len(args)})")
    unknown = set(kwargs) - _UFUNC_KEYWORDS
    if unknown:
        raise TypeError(f"cupy.{name}: wrong arguments {sorted(unknown)} (CuPy ufuncs take "
                        f"{sorted(_UFUNC_KEYWORDS)})")


def _signature(real):
    try:
        return inspect.signature(real)
    except (TypeError, ValueError):
        return None


class Function:
    """A CuPy namespace function of the double (see the module docstring)."""

    def __init__(self, name, real, compute, signature=None):
        self.__name__ = self.name = name
        self.real = real
        self.compute = compute
        self.signature = signature if signature is not None else (
            None if _is_ufunc(real) else _signature(real))
        if _is_ufunc(real):
            self.nin, self.nout = real.nin, real.nout

    def __repr__(self):
        return f"<double of cupy.{self.name}{self.signature or ''}>"

    def __call__(self, *args, **kwargs):
        out = kwargs.get("out")
        if isinstance(out, tuple) and len(out) == 1:  # NumPy's __array_ufunc__ passes a tuple
            kwargs["out"] = out = out[0]
        if _is_ufunc(self.real):
            _check_ufunc_call(self.name, self.real, args, kwargs)
        elif self.signature is not None:
            try:
                self.signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"cupy.{self.name}{self.signature}: {exc}") from None
        if self.name in _OWN:
            return _OWN[self.name](*args, **kwargs)
        if self.name in _SYNCING:
            counters.record("sync")
        np_args = unwrap_tree(args)
        np_kwargs = {k: unwrap_tree(v) for k, v in kwargs.items()}
        with quiet():
            result = self.compute(*np_args, **np_kwargs)
        return wrap_result(result, tuple(a for a in args if isinstance(a, ndarray)) + (out,))


def _missing_in_numpy(name):
    def compute(*args, **kwargs):
        raise NotImplementedError(f"the CuPy double has no NumPy twin for cupy.{name}; add "
                                  "one in tests/cupy_double/fake_cupy.py")
    return compute


def _namespace_getattr(name):
    if name.startswith("__"):
        raise AttributeError(name)
    real = real_cupy()
    try:
        value = getattr(real, name)
    except AttributeError:
        raise AttributeError(f"module 'cupy' has no attribute {name!r} (CuPy 14 has no "
                             "such name; the CuPy double mirrors it)") from None
    if isinstance(value, (type, np.dtype, int, float, type(None), str)) and \
            getattr(np, name, object()) is value:
        result = value  # dtypes and constants are NumPy's own objects in CuPy too
    elif isinstance(value, (int, float)):
        result = value
    elif callable(value) and not isinstance(value, type):
        compute = getattr(np, name, None) or _missing_in_numpy(name)
        result = Function(name, value, compute)
    else:
        raise AttributeError(f"the CuPy double does not model cupy.{name} "
                             f"({type(value).__name__}); add it in fake_cupy.py")
    setattr(module, name, result)
    return result


def _build_module():
    mod = types.ModuleType("cupy", __doc__)
    mod.__file__ = __file__
    mod.__version__ = real_cupy().__version__
    mod.__getattr__ = _namespace_getattr
    mod.ndarray = ndarray
    mod.cuda = fake_cublas.attach(fake_cuda.build_module())
    mod.random = fake_random.build_module(real_cupy().random)
    mod.get_default_memory_pool = fake_cuda.get_default_memory_pool
    mod.get_default_pinned_memory_pool = fake_cuda.get_default_pinned_memory_pool
    mod.is_double = True
    return mod


_saved_modules = None
_saved_hook = None


def install():
    """Put the double into ``sys.modules`` as ``cupy`` (idempotent); returns the module.

    Also routes simulator kernel launches to the NumPy memory of double arrays.
    """
    global module, _saved_modules, _saved_hook
    real_cupy()
    if module is not None and sys.modules.get("cupy") is module:
        return module
    module = _build_module()
    _saved_modules = {k: v for k, v in sys.modules.items()
                      if k == "cupy" or k.startswith("cupy.")}
    for key in _saved_modules:
        del sys.modules[key]
    sys.modules["cupy"] = module
    sys.modules["cupy.cuda"] = module.cuda
    sys.modules["cupy.cuda.runtime"] = module.cuda.runtime
    sys.modules["cupy.cuda.cublas"] = module.cuda.cublas
    sys.modules["cupy.random"] = module.random
    from dualnn.kernels import _cuda as kernels_cuda

    _saved_hook = kernels_cuda._simulated_device_array

    def simulated_device_array(a, _original=_saved_hook):
        return _original(a.launch_array() if isinstance(a, ndarray) else a)

    kernels_cuda._simulated_device_array = simulated_device_array
    return module


def uninstall():
    """Undo :func:`install`."""
    global module
    if module is None:
        return
    for key in [k for k in sys.modules if k == "cupy" or k.startswith("cupy.")]:
        del sys.modules[key]
    sys.modules.update(_saved_modules or {})
    from dualnn.kernels import _cuda as kernels_cuda

    kernels_cuda._simulated_device_array = _saved_hook
    module = None


__all__ = [
    "install",
    "is_pinned",
    "module",
    "ndarray",
    "real_cupy",
    "uninstall",
    "unsupported",
]
