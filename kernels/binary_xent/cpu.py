"""BCE-on-logits terms and gradient as a Numba kernel on NumPy arrays (twin of
``reference.binary_xent_terms``): one pass, no ``fastmath`` (NaN propagates). Numba is
imported on the first call, never at import.
"""

from __future__ import annotations

import math

from .._numba import PARALLEL_THRESHOLD, KernelSet, check, prange


def _k_binary_xent_terms(z, t, scale, terms, grad):
    zero = z.dtype.type(0)
    one = z.dtype.type(1)
    for i in prange(z.shape[0]):
        v = z[i]
        e = math.exp(-abs(v))
        positive = v if v > zero else zero  # noqa: FURB136 - max() needs a CUDA driver to type
        negative = v if v < zero else zero  # noqa: FURB136 - likewise; NaN terms stay NaN
        terms[i] = (positive - v * t[i]) + math.log1p(e)
        grad[i] = (math.exp(negative) / (one + e) - t[i]) * scale


_KERNELS = KernelSet(globals(), kernels=("binary_xent_terms",))


def binary_xent_terms(z, t, scale, *, terms, grad):
    """Write ``terms`` and ``grad`` (see :func:`..reference.binary_xent_terms`); every array
    float32/float64 of one dtype and shape, C-contiguous. Returns ``(terms, grad)``."""
    check(z, t, terms, grad, shapes=[z.shape] * 4, outputs=(terms, grad))
    _KERNELS.get("binary_xent_terms", z.size, PARALLEL_THRESHOLD)(
        z.reshape(-1), t.reshape(-1), z.dtype.type(scale), terms.reshape(-1),
        grad.reshape(-1))
    return terms, grad


__all__ = ["binary_xent_terms"]
