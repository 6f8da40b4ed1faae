"""The double's ``cupy.random``: NumPy generators behind CuPy's signatures.

``default_rng(seed)`` returns a :class:`Generator` whose methods bind their arguments to
the real ``cupy.random.Generator`` method's signature and draw with
``numpy.random.default_rng(seed)``; results are double arrays (one allocation each,
or none with ``out=``). The streams differ from a real GPU's: tests compare dropout by
its mask, never by the draws themselves.
"""

from __future__ import annotations

import inspect
import types

import numpy as np

from .fake_ndarray import ndarray, unwrap_tree, wrap_result


def _bound(real_method, name):
    try:
        signature = inspect.signature(real_method)
    except (TypeError, ValueError):
        signature = None

    def method(self, *args, **kwargs):
        if signature is not None:
            try:
                signature.bind(self, *args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"cupy.random.Generator.{name}{signature}: {exc}") from None
        out = kwargs.get("out")
        np_kwargs = {k: unwrap_tree(v) for k, v in kwargs.items()}
        if "dtype" in np_kwargs:
            np_kwargs["dtype"] = np.dtype(np_kwargs["dtype"])
        result = getattr(self._np, name)(*unwrap_tree(args), **np_kwargs)
        return wrap_result(result, (out,) if isinstance(out, ndarray) else ())

    method.__name__ = name
    return method


def build_module(real_random):
    """A ``cupy.random`` module of the double, mirroring ``real_random``'s names."""
    members = {"__init__": lambda self, bit_generator=None, _np=None: setattr(
        self, "_np", _np if _np is not None else np.random.default_rng())}
    for name in dir(real_random.Generator):
        if not name.startswith("_"):
            members[name] = _bound(getattr(real_random.Generator, name), name)
    generator_type = type("Generator", (), members)
    generator_type.__module__ = "cupy.random"

    mod = types.ModuleType("cupy.random", __doc__)
    mod.Generator = generator_type
    default_rng_signature = inspect.signature(real_random.default_rng)

    def default_rng(*args, **kwargs):
        bound = default_rng_signature.bind(*args, **kwargs)
        seed = bound.arguments.get("seed")
        return generator_type(_np=np.random.default_rng(seed))

    mod.default_rng = default_rng
    legacy = np.random.RandomState()

    def seed(seed=None):
        legacy.seed(seed)

    mod.seed = seed
    for name in ("rand", "randn", "random", "uniform", "normal", "standard_normal",
                 "randint", "permutation", "shuffle", "choice"):
        def draw(*args, _name=name, **kwargs):
            return wrap_result(getattr(legacy, _name)(*unwrap_tree(args),
                                                      **{k: unwrap_tree(v)
                                                         for k, v in kwargs.items()}))
        setattr(mod, name, draw)
    return mod
