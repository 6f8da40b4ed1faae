"""The double's ``cupy.ndarray``: NumPy memory behind CuPy's rules.

A :class:`ndarray` wraps one NumPy array (``_a``) and behaves as a CuPy array does where
dualnn could tell the difference:

- results of operations are arrays, 0-d included (never Python or NumPy scalars);
- ``np.asarray(a)`` / ``__array__`` raise ``TypeError`` as CuPy does; mixing a NumPy
  array into an operation raises ``TypeError`` ("Unsupported type");
- reads back to the host (``get``, ``item``, ``float``, ``int``, ``bool``, ``tolist``,
  ``repr``/``str``/``format``, boolean-mask indexing) work and are counted as syncs;
- every array that owns new memory is counted as a device allocation (views are not);
- ``flags`` has only CuPy's ``c_contiguous``/``f_contiguous``/``owndata``.

NumPy functions called on these arrays dispatch to the double's ``cupy`` namespace
(``__array_function__``/``__array_ufunc__``), as CuPy's arrays do.
"""

from __future__ import annotations

import inspect
import numbers
import weakref
from collections import Counter

import numpy as np

from . import counters

_owners = set()
"""``id`` of each NumPy array owning the memory of a live double array (removed when the
memory is freed, before the id can be reused)."""

_memory = {"used": 0, "cached": 0}

POOL_ROUNDING = 512
"""CuPy's memory pool hands out blocks in multiples of 512 bytes."""

_free_blocks = Counter()
"""Block size (bytes) -> freed blocks of that size the pool keeps for the next request."""


def _block(nbytes):
    return -(-nbytes // POOL_ROUNDING) * POOL_ROUNDING


def _from_pool(nbytes):
    """Serve a request from a freed block of its (rounded) size, or count pool growth: new
    device memory (``cudaMalloc`` on a GPU), which no freed block of that size could serve."""
    size = _block(nbytes)
    if not size:
        return  # CuPy allocates nothing for an empty array
    if _free_blocks[size]:
        _free_blocks[size] -= 1
        _memory["cached"] -= size
    else:
        counters.record("pool_growth")



def quiet():
    """GPUs raise no floating-point warnings (overflow, invalid): neither does the double."""
    return np.errstate(all="ignore")


def _owner(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _release(key, nbytes):
    _owners.discard(key)
    _memory["used"] -= nbytes
    size = _block(nbytes)
    if size:
        _free_blocks[size] += 1
        _memory["cached"] += size


def wrap(a):
    """A double array around the NumPy array ``a``; counts an allocation if ``a`` owns
    memory no double array has shown before (NumPy scalars become 0-d arrays)."""
    if isinstance(a, np.generic):
        a = np.array(a)
    owner = _owner(a)
    if id(owner) not in _owners:
        _owners.add(id(owner))
        counters.record("alloc")
        _from_pool(owner.nbytes)
        _memory["used"] += owner.nbytes
        weakref.finalize(owner, _release, id(owner), owner.nbytes)
    out = object.__new__(ndarray)
    out._a = a
    return out


def wrap_result(result, inputs=()):
    """Wrap a NumPy result; an array that *is* one of ``inputs``' memory returns that input."""
    if isinstance(result, tuple):
        return tuple(wrap_result(r, inputs) for r in result)
    if isinstance(result, list):
        return [wrap_result(r, inputs) for r in result]
    if isinstance(result, (np.ndarray, np.generic)):
        for original in inputs:
            if isinstance(original, ndarray) and original._a is result:
                return original
        return wrap(result)
    return result


def unsupported(value):
    return TypeError(f"Unsupported type {type(value)}")


def operand(value, allow_host=False):
    """The NumPy value to compute with: double arrays unwrap, scalars pass, NumPy arrays
    raise TypeError as in CuPy (unless ``allow_host``)."""
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, np.ndarray) and not allow_host:
        raise unsupported(value)
    return value


def unwrap_tree(value, allow_host=False):
    """``operand`` applied through tuples, lists and dicts (for function arguments)."""
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, np.ndarray):
        if not allow_host:
            raise unsupported(value)
        return value
    if isinstance(value, tuple):
        return tuple(unwrap_tree(v, allow_host) for v in value)
    if isinstance(value, list):
        return [unwrap_tree(v, allow_host) for v in value]
    return value


class Flags:
    """CuPy's ``ndarray.flags``: three read-only booleans (no ``writeable``)."""

    __slots__ = ("c_contiguous", "f_contiguous", "owndata")

    def __init__(self, a):
        self.c_contiguous = bool(a.flags.c_contiguous)
        self.f_contiguous = bool(a.flags.f_contiguous)
        self.owndata = bool(a.flags.owndata)

    def __getitem__(self, key):
        return getattr(self, {"C_CONTIGUOUS": "c_contiguous", "F_CONTIGUOUS": "f_contiguous",
                              "OWNDATA": "owndata"}[key])


def _binary(ufunc, reflected=False):
    def method(self, other):
        if isinstance(other, np.ndarray):
            raise unsupported(other)
        if not isinstance(other, (ndarray, numbers.Number, np.generic)):
            return NotImplemented
        a, b = (operand(other), self._a) if reflected else (self._a, operand(other))
        with quiet():
            return wrap(ufunc(a, b))
    return method


def _inplace(ufunc):
    def method(self, other):
        if isinstance(other, np.ndarray):
            raise unsupported(other)
        if not isinstance(other, (ndarray, numbers.Number, np.generic)):
            return NotImplemented
        with quiet():
            ufunc(self._a, operand(other), out=self._a)
        return self
    return method


def _unary(ufunc):
    def method(self):
        with quiet():
            return wrap(ufunc(self._a))
    return method


def _host_read(convert):
    def method(self, *args):
        counters.record("sync")
        return convert(self._a, *args)
    return method


_METHOD_PARAMETERS = {
    "sum": "axis=None, dtype=None, out=None, keepdims=False",
    "prod": "axis=None, dtype=None, out=None, keepdims=False",
    "mean": "axis=None, dtype=None, out=None, keepdims=False",
    "var": "axis=None, dtype=None, out=None, ddof=0, keepdims=False",
    "std": "axis=None, dtype=None, out=None, ddof=0, keepdims=False",
    "max": "axis=None, out=None, keepdims=False",
    "min": "axis=None, out=None, keepdims=False",
    "argmax": "axis=None, out=None, dtype=None, keepdims=False",
    "argmin": "axis=None, out=None, dtype=None, keepdims=False",
    "all": "axis=None, out=None, keepdims=False",
    "any": "axis=None, out=None, keepdims=False",
    "clip": "min=None, max=None, out=None",
    "cumsum": "axis=None, dtype=None, out=None",
    "round": "decimals=0, out=None",
}
"""CuPy 14's ``ndarray`` method parameters (its methods have no inspectable signature)."""


def _method_signature(name):
    namespace = {}
    exec(f"def {name}({_METHOD_PARAMETERS[name]}): pass", namespace)  # noqa: S102
    return inspect.signature(namespace[name])


def _reduction(name):
    signature = _method_signature(name)

    def method(self, *args, **kwargs):
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"cupy.ndarray.{name}{signature}: {exc}") from None
        out = kwargs.get("out")
        kwargs = {k: operand(v) for k, v in kwargs.items()}
        with quiet():
            result = getattr(self._a, name)(*[operand(a) for a in args], **kwargs)
        return wrap_result(result, (out,))
    method.__name__ = name
    return method


def _index(key):
    """NumPy index for ``key``; counts a sync for a boolean mask (its size is data)."""
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    if isinstance(key, ndarray):
        if key._a.dtype == np.bool_:
            counters.record("sync")
        return key._a
    if isinstance(key, np.ndarray):
        raise unsupported(key)
    return key


class ndarray:
    """See the module docstring. ``ndarray(shape, dtype)`` allocates, as in CuPy."""

    __slots__ = ("__weakref__", "_a")
    __array_priority__ = 100

    def __new__(cls, shape, dtype=float, memptr=None, strides=None, order="C"):
        return wrap(np.empty(shape, dtype=dtype, order=order))

    # ---------------------------------------------------------------- attributes
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: Flags(self._a))

    @property
    def T(self):
        return wrap(self._a.T)

    @property
    def mT(self):
        return wrap(np.swapaxes(self._a, -1, -2))

    @property
    def device(self):
        from . import fake_cuda

        return fake_cuda.Device(0)

    @property
    def base(self):
        return None if self._a.base is None else wrap(_owner(self._a))

    @property
    def data(self):
        from . import fake_cuda

        return fake_cuda.MemoryPointer(self._a.__array_interface__["data"][0])

    @property
    def __cuda_array_interface__(self):
        """Version 3 of the interface; the pointer is a host address (the double's memory)."""
        iface = self._a.__array_interface__
        return {"shape": self._a.shape, "typestr": self._a.dtype.str,
                "data": (iface["data"][0], False), "version": 3,
                "strides": None if self._a.flags.c_contiguous else self._a.strides,
                "stream": 1}

    def launch_array(self):
        """The NumPy array a simulator kernel launch writes into (shares memory)."""
        return self._a

    # ---------------------------------------------------------------- host conversions
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use "
                        "`.get()` to construct a NumPy array explicitly.")

    def get(self, stream=None, order="C", out=None, blocking=True):
        counters.record("sync" if blocking else "d2h_async")
        if out is not None:
            out[...] = self._a
            return out
        return np.array(self._a, order=order, copy=True)

    def set(self, arr, stream=None):
        from . import fake_cupy

        counters.record("h2d")
        if not fake_cupy.is_pinned(arr):
            counters.record("h2d_pageable")
        self._a[...] = np.asarray(arr)

    __float__ = _host_read(float)
    __int__ = _host_read(int)
    __bool__ = _host_read(bool)
    __complex__ = _host_read(complex)
    item = _host_read(lambda a, *args: a.item(*args))
    tolist = _host_read(lambda a: a.tolist())
    tobytes = _host_read(lambda a, order="C": a.tobytes(order))
    __repr__ = _host_read(lambda a: repr(a).replace("array(", "array(", 1))
    __str__ = _host_read(str)
    __format__ = _host_read(format)

    def __getattr__(self, name):
        from . import fake_cupy

        if name.startswith("__") or not hasattr(fake_cupy.real_cupy().ndarray, name):
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")
        raise AttributeError(f"the CuPy double does not model cupy.ndarray.{name} yet; add "
                             "it in tests/cupy_double/fake_ndarray.py")

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self._a)))

    # ---------------------------------------------------------------- indexing
    def __getitem__(self, key):
        return wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray):
            counters.record("h2d")
            counters.record("h2d_pageable")
        self._a[_index(key)] = operand(value, allow_host=True)

    # ---------------------------------------------------------------- numpy protocols
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        from . import fake_cupy

        if method != "__call__":
            return NotImplemented
        function = getattr(fake_cupy.module, ufunc.__name__, None)
        if function is None:
            return NotImplemented
        return function(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        from . import fake_cupy

        function = getattr(fake_cupy.module, func.__name__, None)
        if function is None:
            return NotImplemented
        return function(*args, **kwargs)

    # ---------------------------------------------------------------- methods
    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if not copy and np.dtype(dtype) == self._a.dtype:
            return self
        return wrap(self._a.astype(dtype, order=order, casting=casting or "unsafe"))

    def copy(self, order="C"):
        return wrap(self._a.copy(order=order))

    def reshape(self, *shape, order="C"):
        return wrap(self._a.reshape(*shape, order=order))

    def view(self, dtype=None):
        return wrap(self._a.view() if dtype is None else self._a.view(dtype))

    def fill(self, value):
        self._a.fill(operand(value))

    def transpose(self, *axes):
        return wrap(self._a.transpose(*axes))

    def swapaxes(self, a1, a2):
        return wrap(self._a.swapaxes(a1, a2))

    def ravel(self, order="C"):
        return wrap(self._a.ravel(order))

    def flatten(self, order="C"):
        return wrap(self._a.flatten(order))

    def squeeze(self, axis=None):
        return wrap(self._a.squeeze(axis))

    def nonzero(self):
        counters.record("sync")
        return wrap_result(self._a.nonzero())

    def dot(self, b, out=None):
        return wrap_result(np.dot(self._a, operand(b), out=operand(out)), (out,))

    def take(self, indices, axis=None, out=None):
        return wrap_result(self._a.take(operand(indices), axis, operand(out)), (out,))

    sum = _reduction("sum")
    prod = _reduction("prod")
    mean = _reduction("mean")
    var = _reduction("var")
    std = _reduction("std")
    max = _reduction("max")
    min = _reduction("min")
    argmax = _reduction("argmax")
    argmin = _reduction("argmin")
    all = _reduction("all")
    any = _reduction("any")
    clip = _reduction("clip")
    cumsum = _reduction("cumsum")
    round = _reduction("round")

    # ---------------------------------------------------------------- operators
    __add__, __radd__, __iadd__ = _binary(np.add), _binary(np.add, True), _inplace(np.add)
    __sub__, __rsub__, __isub__ = (_binary(np.subtract), _binary(np.subtract, True),
                                   _inplace(np.subtract))
    __mul__, __rmul__, __imul__ = (_binary(np.multiply), _binary(np.multiply, True),
                                   _inplace(np.multiply))
    __truediv__, __rtruediv__, __itruediv__ = (_binary(np.true_divide),
                                               _binary(np.true_divide, True),
                                               _inplace(np.true_divide))
    __floordiv__, __rfloordiv__, __ifloordiv__ = (_binary(np.floor_divide),
                                                  _binary(np.floor_divide, True),
                                                  _inplace(np.floor_divide))
    __mod__, __rmod__, __imod__ = (_binary(np.remainder), _binary(np.remainder, True),
                                   _inplace(np.remainder))
    __pow__, __rpow__, __ipow__ = (_binary(np.power), _binary(np.power, True),
                                   _inplace(np.power))
    __matmul__, __rmatmul__ = _binary(np.matmul), _binary(np.matmul, True)
    __and__, __rand__, __iand__ = (_binary(np.bitwise_and), _binary(np.bitwise_and, True),
                                   _inplace(np.bitwise_and))
    __or__, __ror__, __ior__ = (_binary(np.bitwise_or), _binary(np.bitwise_or, True),
                                _inplace(np.bitwise_or))
    __xor__, __rxor__, __ixor__ = (_binary(np.bitwise_xor), _binary(np.bitwise_xor, True),
                                   _inplace(np.bitwise_xor))
    __lt__, __le__ = _binary(np.less), _binary(np.less_equal)
    __gt__, __ge__ = _binary(np.greater), _binary(np.greater_equal)
    __eq__, __ne__ = _binary(np.equal), _binary(np.not_equal)
    __neg__, __pos__ = _unary(np.negative), _unary(np.positive)
    __abs__, __invert__ = _unary(np.absolute), _unary(np.invert)
    __hash__ = None

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()


ndarray.__module__ = "cupy"
ndarray.__qualname__ = ndarray.__name__ = "ndarray"


def memory_in_use():
    """``(used, cached)`` bytes of the double's device memory (its memory pool's view)."""
    return _memory["used"], _memory["cached"]


def free_block_count():
    """Freed blocks the pool keeps (``MemoryPool.n_free_blocks``)."""
    return sum(_free_blocks.values())


def free_cached():
    """``free_all_blocks``: the pool returns every freed block to the device."""
    _memory["cached"] = 0
    _free_blocks.clear()
