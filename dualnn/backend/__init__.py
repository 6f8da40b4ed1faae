"""Backends: the array namespace, the fused ops and the device facts layers rely on.

- :class:`ArrayAPIBackend` — any Array API namespace, reference math (the fallback).
- :class:`NumpyBackend` — NumPy on the CPU with fused Numba kernels.
- :class:`CupyBackend` — CuPy on an NVIDIA GPU with fused Numba-CUDA kernels
  (imported lazily; needs the ``gpu`` extra).
"""

from .base import ArrayAPIBackend
from .numpy_backend import NumpyBackend


def __getattr__(name):
    if name == "CupyBackend":
        from .cupy_backend import CupyBackend
        return CupyBackend
    raise AttributeError(name)


__all__ = ["ArrayAPIBackend", "NumpyBackend", "CupyBackend"]
