"""Shared values of the simulator tests."""

from __future__ import annotations

import numpy as np

DTYPES = ("float32", "float64")


def tolerances(dtype):
    """``(rtol, atol)`` for comparing a kernel with its reference twin."""
    return (2e-5, 1e-6) if np.dtype(dtype) == np.float32 else (1e-12, 1e-14)


EDGE_VALUES = (0.0, -0.0, np.inf, -np.inf, np.nan, 1e4, -1e4, 1e-30, -1e-30, 88.0, -88.0,
               1.0, -1.0, 0.5)
"""Inputs every elementwise kernel sees: zeros, infinities, NaN, huge and tiny values."""
