"""The GPU backend: CuPy arrays, fused Numba-CUDA kernels where they apply."""

from __future__ import annotations

import numpy as np

from .base import ArrayAPIBackend, dtype_name
from .numpy_backend import fused_kernels_enabled


class CupyBackend(ArrayAPIBackend):
    """CuPy on one NVIDIA GPU.

    Parameters
    ----------
    device_id : int
        CUDA device ordinal.
    fused : bool, optional
        Use the Numba-CUDA kernels; default from ``DUALNN_FUSED`` (on).
    """

    def __init__(self, device_id=0, fused=None):
        import cupy

        self.cupy = cupy
        self.device_id = int(device_id)
        super().__init__(cupy, name="cupy", device=f"gpu:{self.device_id}")
        self.fused = fused_kernels_enabled() if fused is None else bool(fused)
        self._rng = cupy.random.default_rng()

    def owns(self, a):
        return isinstance(a, self.cupy.ndarray) and a.device.id == self.device_id

    def asarray(self, a, dtype=None):
        with self.cupy.cuda.Device(self.device_id):
            if dtype is not None:
                dtype = self.dtype(dtype)
            if isinstance(a, self.cupy.ndarray):
                return self.cupy.ascontiguousarray(a, dtype=dtype)
            return self.cupy.ascontiguousarray(self.cupy.asarray(np.asarray(a), dtype=dtype))

    def to_host(self, a):
        if isinstance(a, self.cupy.ndarray):
            return self.cupy.asnumpy(a)
        return np.asarray(a)

    def synchronize(self):
        self.cupy.cuda.Device(self.device_id).synchronize()

    def seed(self, seed):
        super().seed(seed)
        with self.cupy.cuda.Device(self.device_id):
            self._rng = self.cupy.random.default_rng(seed)

    def random_uniform(self, shape, dtype="float32"):
        with self.cupy.cuda.Device(self.device_id):
            return self._rng.random(shape, dtype=dtype_name(dtype))
