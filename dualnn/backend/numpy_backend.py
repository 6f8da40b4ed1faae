"""The CPU backend: NumPy arrays, fused Numba kernels where they apply."""

from __future__ import annotations

import os

import numpy as np

from .base import ArrayAPIBackend


def fused_kernels_enabled():
    """Whether fused kernels are switched on (``DUALNN_FUSED=0`` switches them off)."""
    return os.environ.get("DUALNN_FUSED", "1").strip().lower() not in ("0", "false", "no", "off")


class NumpyBackend(ArrayAPIBackend):
    """NumPy on the CPU.

    Ops with a Numba kernel in :mod:`dualnn.kernels.cpu` run it for float32/float64
    C-contiguous arrays when ``fused`` is true; other cases run the reference math.

    Parameters
    ----------
    fused : bool, optional
        Use the fused kernels; default from the ``DUALNN_FUSED`` environment variable (on).
    """

    def __init__(self, fused=None):
        super().__init__(np, name="numpy", device="cpu")
        self.fused = fused_kernels_enabled() if fused is None else bool(fused)

    def owns(self, a):
        return isinstance(a, np.ndarray)

    def asarray(self, a, dtype=None):
        return np.ascontiguousarray(a, dtype=None if dtype is None else self.dtype(dtype))

    def to_host(self, a):
        return np.asarray(a)
