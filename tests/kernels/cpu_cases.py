"""Helpers of the CPU-specific kernel tests (shapes up to 257 x 129, hypothesis profile)."""

from __future__ import annotations

import numpy as np
from dualnn.kernels import reference as R
from hypothesis import settings

from dualnn.backend import NumpyBackend

settings.register_profile("cpu_kernels", deadline=None, max_examples=25, derandomize=True)
PROFILE = settings.get_profile("cpu_kernels")

DTYPES = [np.float32, np.float64]
SHAPES = [(1, 1), (1, 7), (7, 13), (33, 65), (257, 129)]
KINDS = list(R.ACTIVATIONS)
EDGE = [0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30, 20.0, -20.0, 88.0, -88.0, 1e4, -1e4, 1e30,
        -1e30, np.inf, -np.inf, np.nan]
FUSED = NumpyBackend(fused=True)
UNFUSED = NumpyBackend(fused=False)


def tol(dtype):
    return 1e-12 if np.dtype(dtype) == np.float64 else 1e-5


def assert_close(actual, expected, dtype, scale=None):
    """Relative ``tol(dtype)`` with an absolute floor of ``tol * scale`` (default max|expected|)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape
    finite = np.isfinite(expected)
    if scale is None:
        scale = float(np.max(np.abs(expected[finite]), initial=1.0))
    t = tol(dtype)
    np.testing.assert_allclose(actual, expected, rtol=t, atol=t * max(scale, 1.0),
                               equal_nan=True)


def rand(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def saved_for(kind, z):
    """What the backward pass receives: the input for relu/leaky/elu, the output otherwise."""
    if kind in R.BACKWARD_FROM_OUTPUT:
        return np.asarray(R.activation_forward(np, kind, z, 0.1)).astype(z.dtype)
    return z


BN_SHAPES = [(2, 1), (7, 13), (33, 65), (257, 129)]
def bn_inputs(rng, shape, dtype):
    n, c = shape
    x = rand(rng, shape, dtype, 2.0) + rand(rng, c, dtype)
    gamma = (1 + 0.5 * rng.standard_normal(c)).astype(dtype)
    beta = rand(rng, c, dtype)
    rm = rand(rng, c, dtype)
    rv = (1 + rng.random(c)).astype(dtype)
    return x, gamma, beta, rm, rv


OPT_SHAPES = [(), (1,), (7, 13), (33, 65), (3, 4, 5)]
def state_array(rng, shape, dtype, positive=False):
    a = rng.standard_normal(shape)
    return np.asarray(np.abs(a) if positive else a).astype(dtype)
