"""Reference binary cross-entropy terms and gradient: pure functions over ``xp``."""

from __future__ import annotations


def binary_xent_terms(xp, z, t, scale):
    """Per-element loss terms and the scaled gradient of BCE on logits.

    Parameters
    ----------
    z, t : arrays of one shape and float dtype
        Logits and targets in [0, 1].
    scale : float
        Gradient factor (1 / count for a mean).

    Returns
    -------
    terms : array, shape of ``z``
        ``max(z, 0) - z t + log1p(exp(-|z|))`` (sum them for the loss).
    grad : array, shape of ``z``
        ``(sigmoid(z) - t) * scale`` with ``sigmoid(z) = exp(min(z, 0)) / (1 + exp(-|z|))``.
    """
    e = xp.exp(-xp.abs(z))
    terms = xp.maximum(z, xp.zeros_like(z)) - z * t + xp.log1p(e)
    sigmoid = xp.exp(xp.minimum(z, xp.zeros_like(z))) / (1 + e)
    return terms, (sigmoid - t) * scale


__all__ = ["binary_xent_terms"]
