"""The one set of cases and tolerances every kernel family is tested with, on every device.

``DEVICES`` parametrizes a test over the reference's twins: ``"cpu"`` (Numba) always,
``"cudasim"`` (Numba-CUDA in Numba's simulator) only in a process started with
``NUMBA_ENABLE_CUDASIM=1`` (``tests/test_cudasim_suite.py`` starts one); elsewhere those
cases are skipped by ``conftest.py``. Both devices take the same calling convention, so
one test body serves both.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() == "1"

CUDASIM = pytest.mark.cudasim
"""Marks a test that runs CUDA kernels under the simulator (own process only)."""

DEVICES = ["cpu", pytest.param("cudasim", marks=CUDASIM)]

DTYPE_NAMES = ("float32", "float64")

SHAPES = [(1, 1), (1, 7), (5, 7), (16, 9)]
"""Small enough for the simulator (~1-2k threads); batch of 1 included."""

EDGE_VALUES = (0.0, -0.0, np.inf, -np.inf, np.nan, 1e4, -1e4, 1e-30, -1e-30, 88.0, -88.0,
               1.0, -1.0, 0.5, 1e30, -1e30)
"""Inputs every elementwise kernel sees: zeros, infinities, NaN, huge and tiny values."""


def tolerances(dtype):
    """``(rtol, atol)`` for comparing a kernel with its reference twin."""
    return (2e-5, 1e-6) if np.dtype(dtype) == np.float32 else (1e-12, 1e-14)


def device_kernels(device):
    """The kernels module of ``device``: :mod:`dualnn.kernels.cpu` or ``.cuda``."""
    if device == "cpu":
        from dualnn.kernels import cpu

        return cpu
    from dualnn.kernels import cuda

    return cuda


def edge_matrix(rng, shape, dtype, scale=3.0):
    """A matrix of ``shape`` whose first entries are :data:`EDGE_VALUES`, the rest random."""
    size = int(np.prod(shape))
    values = rng.standard_normal(size) * scale
    k = min(size, len(EDGE_VALUES))
    values[:k] = EDGE_VALUES[:k]
    return values.reshape(shape).astype(dtype)
