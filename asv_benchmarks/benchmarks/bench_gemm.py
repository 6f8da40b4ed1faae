"""The CPU backend's float GEMMs: NumPy's OpenBLAS against oneMKL (the ``mkl`` extra).

The three GEMMs of a 1024 -> 1024 Linear layer (forward, weight gradient, input
gradient), through ``NumpyBackend.matmul``/``matmul_accumulate`` as the layer calls them.
Side by side in one run, the two libraries' ratio is what to read; the oneMKL case is
skipped where the ``mkl`` wheel is not installed.
"""

from __future__ import annotations

import numpy as np

from dualnn.backend import NumpyBackend, mkl_gemm

FEATURES = 1024


class CpuLinearGemms:
    params = [["openblas", "mkl"], ["float32", "float64"], [512, 4096]]
    param_names = ["library", "dtype", "batch"]

    def setup(self, library, dtype, batch):
        if library == "mkl" and not mkl_gemm.availability()[0]:
            raise NotImplementedError("oneMKL is not installed")
        self.backend = NumpyBackend(mkl_gemm=library == "mkl")
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((batch, FEATURES)).astype(dtype)
        self.w = rng.standard_normal((FEATURES, FEATURES)).astype(dtype)
        self.dy = rng.standard_normal((batch, FEATURES)).astype(dtype)
        self.y = np.empty((batch, FEATURES), dtype)
        self.dx = np.empty((batch, FEATURES), dtype)
        self.dw = np.zeros((FEATURES, FEATURES), dtype)
        self.time_linear_gemms()

    def time_linear_gemms(self, *args):
        self.backend.matmul(self.x, self.w.T, out=self.y)
        self.backend.matmul_accumulate(self.dy.T, self.x, self.dw, overwrite=True)
        self.backend.matmul(self.dy, self.w, out=self.dx)
