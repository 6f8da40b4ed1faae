"""Readable definitions of the batch-norm ops, written once for any Array API namespace.

Each function takes the array namespace ``xp`` first and returns new arrays; it never
writes into its arguments. Only Array API standard calls are used, so this runs on NumPy,
CuPy and ``array_api_strict`` alike. The CPU (``cpu.py``) and CUDA (``cuda.py``) kernels
beside this module compute the same results; tests compare them with these twins.

Shapes: ``x``, ``y``, ``dy`` are ``(batch, features)``; per-feature vectors (``gamma``,
``beta``, ``mean``, ``invstd``, running statistics) are ``(features,)``.
"""

from __future__ import annotations


def _bfloat16(xp, a, rounded):
    """``a`` rounded to bfloat16 when ``rounded`` (an input whose 16-bit rounding was left
    to its reader; float32), else ``a``."""
    if not rounded:
        return a
    from ..cast.reference import round_bfloat16

    return round_bfloat16(xp, a)


def _relu_mask(xp, y, dy):
    return xp.where(y > 0, dy, xp.zeros_like(dy))


def batchnorm_forward_train(xp, x, gamma, beta, running_mean, running_var, eps, momentum,
                            relu=False, round_input=False):
    """Batch normalization over the batch axis, training mode.

    ``xhat = (x - mean) / sqrt(var + eps)``, ``y = gamma * xhat + beta`` with the biased
    batch variance; the running statistics move by ``momentum`` towards the batch mean
    and the *unbiased* batch variance, as in PyTorch. With ``relu=True`` the output is
    ``max(y, 0)`` (the fused BatchNorm -> ReLU block).

    Parameters
    ----------
    x : array, shape (n, c), n >= 2
    gamma, beta, running_mean, running_var : array, shape (c,)
    eps, momentum : float
    relu : bool
    round_input : bool
        Read ``x`` (float32) rounded to bfloat16 (mixed precision leaves that rounding to
        the reader).

    Returns
    -------
    y : array, shape (n, c)
    mean, invstd : array, shape (c,)
        Batch mean and ``1 / sqrt(var + eps)``, saved for the backward pass.
    new_running_mean, new_running_var : array, shape (c,)
    """
    x = _bfloat16(xp, x, round_input)
    n = x.shape[0]
    # Shifting by the first row keeps the sums small when |mean| >> std (float32 data
    # with mean 1e4 and std 1e-2 would otherwise lose every significant digit).
    shifted = x - x[0:1, :]
    shifted_mean = xp.mean(shifted, axis=0)
    centered = shifted - shifted_mean
    mean = x[0, :] + shifted_mean
    var = xp.mean(centered * centered, axis=0)
    invstd = 1 / xp.sqrt(var + eps)
    y = centered * (invstd * gamma) + beta
    if relu:
        y = xp.where(y < 0, xp.zeros_like(y), y)
    unbiased = var * (n / (n - 1))
    new_running_mean = (1 - momentum) * running_mean + momentum * mean
    new_running_var = (1 - momentum) * running_var + momentum * unbiased
    return y, mean, invstd, new_running_mean, new_running_var


def batchnorm_forward_eval(xp, x, gamma, beta, running_mean, running_var, eps, relu=False):
    """Batch normalization with the running statistics (inference); any batch size."""
    scale = gamma / xp.sqrt(running_var + eps)
    y = (x - running_mean) * scale + beta
    if relu:
        y = xp.where(y < 0, xp.zeros_like(y), y)
    return y


def batchnorm_backward(xp, dy, x, gamma, beta, mean, invstd, relu=False, round_x=False,
                       round_dy=False):
    """Gradients of training-mode batch normalization.

    With ``xhat = (x - mean) * invstd``::

        dgamma = sum_n dy * xhat
        dbeta  = sum_n dy
        dx     = gamma * invstd / n * (n * dy - dbeta - xhat * dgamma)

    With ``relu=True``, ``dy`` is the gradient of ``max(y, 0)`` and is first masked
    where ``y = gamma * xhat + beta <= 0`` (the mask is recomputed, not stored).
    ``round_x`` / ``round_dy`` read ``x`` / ``dy`` (float32) rounded to bfloat16.

    Returns
    -------
    dx : array, shape (n, c)
    dgamma, dbeta : array, shape (c,)
    """
    x, dy = _bfloat16(xp, x, round_x), _bfloat16(xp, dy, round_dy)
    n = x.shape[0]
    xhat = (x - mean) * invstd
    if relu:
        dy = _relu_mask(xp, xhat * gamma + beta, dy)
    dbeta = xp.sum(dy, axis=0)
    dgamma = xp.sum(dy * xhat, axis=0)
    dx = (gamma * invstd / n) * (n * dy - dbeta - xhat * dgamma)
    return dx, dgamma, dbeta

