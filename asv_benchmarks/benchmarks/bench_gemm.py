"""The CPU backend's GEMMs: NumPy's OpenBLAS against oneMKL (float), oneDNN against oneMKL
(bfloat16).

The three GEMMs of a 1024 -> 1024 Linear layer (forward, weight gradient, input
gradient), through ``NumpyBackend.matmul``/``matmul_accumulate`` as the layer calls them.
Side by side in one run, the two libraries' ratio is what to read; a library that is not
installed (or, for bfloat16, a CPU without AVX-512 BF16 / AMX) skips its cases.
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


class CpuLinearBfloat16Gemms:
    """The same three GEMMs in bfloat16 with float32 accumulation (``bf16_gemm.gemm`` on
    bit patterns converted beforehand), through each library that loads here."""

    params = [["onednn", "mkl"], [512, 4096]]
    param_names = ["library", "batch"]

    def setup(self, library, batch):
        import os

        from dualnn.kernels.cast.reference import bfloat16_bits

        from dualnn.backend import bf16_gemm

        os.environ[bf16_gemm.LIBRARY_VARIABLE] = library
        bf16_gemm._reset_for_tests()
        ok, reason = bf16_gemm.availability()
        if not ok:
            raise NotImplementedError(f"{library}: {reason}")
        self.gemm = bf16_gemm.gemm
        rng = np.random.default_rng(0)
        self.x, self.w, self.dy = (
            bfloat16_bits(np, rng.standard_normal(shape).astype(np.float32))
            for shape in ((batch, FEATURES), (FEATURES, FEATURES), (batch, FEATURES)))
        self.y = np.empty((batch, FEATURES), np.float32)
        self.dx = np.empty((batch, FEATURES), np.float32)
        self.dw = np.empty((FEATURES, FEATURES), np.float32)
        self.time_linear_gemms()

    def teardown(self, library, batch):
        import os

        from dualnn.backend import bf16_gemm

        os.environ.pop(bf16_gemm.LIBRARY_VARIABLE, None)
        bf16_gemm._reset_for_tests()

    def time_linear_gemms(self, *args):
        self.gemm(self.x, self.w.T, out=self.y)
        self.gemm(self.dy.T, self.x, out=self.dw)
        self.gemm(self.dy, self.w, out=self.dx)
