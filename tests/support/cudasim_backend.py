"""Test support (not shipped): a backend running the fused ops as CUDA kernels in the
simulator.

:class:`CudaSimBackend` is the GPU backend's dispatch (:class:`CudaKernelOps`, shared with
``CupyBackend``) on NumPy arrays, with Numba's CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1``, set before Numba is first imported) running the
kernels. Layers, losses and optimizers built on it exercise the GPU launch path end to end
- argument checks, dispatch, scratch reuse, kernel logic - on a machine without a GPU.

It is slow (one Python thread per simulated CUDA thread): use it on small shapes only.
"""

from __future__ import annotations

import os

from dualnn.backend.cupy_backend import CudaKernelOps
from dualnn.backend.numpy_backend import NumpyBackend
from dualnn.errors import ConfigurationError

SIMULATOR_ENV = "NUMBA_ENABLE_CUDASIM"


class CudaSimBackend(CudaKernelOps, NumpyBackend):
    """NumPy arrays on the host; fused ops run the CUDA kernels under Numba's simulator.

    Ops the kernels do not cover (or arrays they do not take) fall back to
    :class:`NumpyBackend`.

    Parameters
    ----------
    fused : bool
        Run the CUDA kernels (default True); False makes it a plain NumPy backend.

    Raises
    ------
    ConfigurationError
        When Numba's CUDA simulator is not enabled in this process.
    """

    def __init__(self, fused=True):
        from dualnn.kernels import cuda as cuda_kernels

        if os.environ.get(SIMULATOR_ENV, "0").strip() != "1" \
                or not cuda_kernels.simulator_enabled():
            raise ConfigurationError(
                "CudaSimBackend needs Numba's CUDA simulator: set NUMBA_ENABLE_CUDASIM=1 in "
                "the environment before Numba is first imported (run the simulator tests "
                "in their own process, e.g. NUMBA_ENABLE_CUDASIM=1 python -m pytest "
                "tests/kernels); it cannot be switched on once Numba is loaded")
        super().__init__(fused=fused)
        self.name = "cudasim"
        self._init_kernel_ops()
