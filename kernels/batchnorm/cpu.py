"""Batch normalization (+ fused ReLU) as Numba kernels on NumPy arrays (twins of
``reference.py``).

========================  =========================================================
``batchnorm_forward_train`` statistics in one pass (shifted sums in float64), normalize
                          (+ ReLU) in a second, running statistics updated in place
``batchnorm_forward_eval`` one pass
``batchnorm_backward``    reductions in one pass, ``dx`` in a second (``out`` may be ``dy``)
========================  =========================================================

Arguments are checked once here: float32 or float64, one dtype, C-contiguous, ``(n, c)``
and ``(c,)`` shapes, outputs writable. Reductions split the rows into a number of blocks
that depends only on ``n`` and merge in block order: results are bit-identical between
the serial and parallel builds and for any thread count. The second pass runs in place
through one name when ``out`` is the input (see :mod:`dualnn.kernels.activation.cpu`).
Statistics accumulate in float64. ``scratch`` is accepted for the CUDA launchers'
calling convention and unused: these kernels keep their partial sums inside Numba.
"""

from __future__ import annotations

import math

import numpy as np

from .._numba import (
    COMPUTE_PARALLEL_THRESHOLD,
    FORWARD_PARALLEL_THRESHOLD,
    KernelSet,
    check,
    prange,
    same_memory,
    writable_input,
)
from ..cast.cpu import (  # noqa: F401  (the helper _load compiles in this namespace with
    _ABS,  # the constants it names)
    _HALF_MINUS_ONE,
    _INF,
    _KEEP,
    _ONE,
    _QUIET,
    _SHIFT,
)
from ..cast.cpu import bfloat16_on_load as _load

REDUCTION_BLOCKS = 8
"""Most row blocks a batch-norm reduction is split into (merged in block order)."""

MIN_ROWS_PER_BLOCK = 16
"""Fewest rows per reduction block."""

# Kernel sources and inlined helpers: plain Python, compiled by _KERNELS on first use.


def _relu_if(relu, v, zero):
    """``max(v, 0)`` when ``relu``, else ``v`` (helper, inlined)."""
    return zero if relu and v < zero else v


def _bn_input_grad(xv, d, mean, invstd, gamma, beta, k, nf, dbeta, dgamma, relu, zero):
    """One element of batch norm's ``dx`` (+ the fused ReLU's mask) (helper, inlined)."""
    xh = (xv - mean) * invstd
    if relu and not (xh * gamma + beta > zero):
        d = zero
    return k * (nf * d - dbeta - xh * dgamma)


def _reduction_blocks(n):
    """Number of row blocks of a reduction over ``n`` rows (depends on ``n`` only)."""
    return max(1, min(REDUCTION_BLOCKS, n // MIN_ROWS_PER_BLOCK))


def _k_batchnorm_forward_train(x, gamma, beta, running_mean, running_var, eps, momentum, relu,
                               out, save_mean, save_invstd, inplace, rx):
    n, c = x.shape
    nb = _reduction_blocks(n)
    # Pass 1: sums of d = x - shift and d^2 in float64, shift = first row (the "shifted
    # data" algorithm: no cancellation when |mean| >> std). Row blocks -> partial sums.
    shift = np.empty(c, dtype=np.float64)
    for j in range(c):
        shift[j] = _load(x[0, j], rx)
    s1 = np.zeros((nb, c), dtype=np.float64)
    s2 = np.zeros((nb, c), dtype=np.float64)
    for blk in prange(nb):
        a1 = s1[blk]
        a2 = s2[blk]
        for i in range(blk * n // nb, (blk + 1) * n // nb):
            xi = x[i]
            for j in range(c):
                d = np.float64(_load(xi[j], rx)) - shift[j]
                a1[j] += d
                a2[j] += d * d
    # Merge in block order; per-feature statistics and running averages.
    scale = np.empty_like(gamma)
    first = np.empty_like(gamma)  # x[0] (exact in x's dtype), copied: out may be x
    shifted_mean = np.empty_like(gamma)
    for j in range(c):
        t1 = 0.0
        t2 = 0.0
        for blk in range(nb):
            t1 += s1[blk, j]
            t2 += s2[blk, j]
        m1 = t1 / n
        var = t2 / n - m1 * m1
        if var < 0.0:
            var = 0.0
        mean = shift[j] + m1
        first[j] = _load(x[0, j], rx)
        shifted_mean[j] = m1
        invstd = 1.0 / math.sqrt(var + eps)
        save_mean[j] = mean
        save_invstd[j] = invstd
        scale[j] = save_invstd[j] * gamma[j]
        running_mean[j] = (1.0 - momentum) * running_mean[j] + momentum * mean
        running_var[j] = (1.0 - momentum) * running_var[j] + momentum * (var * (n / (n - 1)))
    # Pass 2: normalize, scale, shift (+ ReLU). Centered as (x - x[0]) - shifted mean, as
    # the reference: x - mean in float32 would carry mean's rounding (half an ulp of |mean|).
    # In place through one name (see _k_bias_activation_forward).
    zero = x.dtype.type(0)
    if inplace:
        for i in prange(n):
            xi = x[i]
            for j in range(c):
                xi[j] = _relu_if(relu, ((_load(xi[j], rx) - first[j]) - shifted_mean[j])
                                 * scale[j] + beta[j], zero)
    else:
        for i in prange(n):
            xi = x[i]
            oi = out[i]
            for j in range(c):
                oi[j] = _relu_if(relu, ((_load(xi[j], rx) - first[j]) - shifted_mean[j])
                                 * scale[j] + beta[j], zero)


def _k_batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps, relu, out,
                              inplace):
    n, c = x.shape
    scale = np.empty_like(gamma)
    for j in range(c):
        scale[j] = gamma[j] / math.sqrt(running_var[j] + eps)
    zero = x.dtype.type(0)
    if inplace:
        for i in prange(n):
            xi = x[i]
            for j in range(c):
                xi[j] = _relu_if(relu, (xi[j] - running_mean[j]) * scale[j] + beta[j], zero)
    else:
        for i in prange(n):
            xi = x[i]
            oi = out[i]
            for j in range(c):
                oi[j] = _relu_if(relu, (xi[j] - running_mean[j]) * scale[j] + beta[j], zero)


def _k_batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu, out, dgamma, dbeta,
                          inplace, rx, rdy):
    n, c = x.shape
    nb = _reduction_blocks(n)
    zero = x.dtype.type(0)
    # Pass 1: sum dy and sum dy * xhat per feature (float64 partials per row block).
    s_dy = np.zeros((nb, c), dtype=np.float64)
    s_dyx = np.zeros((nb, c), dtype=np.float64)
    for blk in prange(nb):
        a1 = s_dy[blk]
        a2 = s_dyx[blk]
        for i in range(blk * n // nb, (blk + 1) * n // nb):
            xi = x[i]
            di = dy[i]
            for j in range(c):
                xh = (_load(xi[j], rx) - mean[j]) * invstd[j]
                d = _load(di[j], rdy)
                if relu and not (xh * gamma[j] + beta[j] > zero):
                    d = zero
                a1[j] += d
                a2[j] += np.float64(d) * np.float64(xh)
    k = np.empty_like(gamma)
    nf = x.dtype.type(n)
    for j in range(c):
        t1 = 0.0
        t2 = 0.0
        for blk in range(nb):
            t1 += s_dy[blk, j]
            t2 += s_dyx[blk, j]
        dbeta[j] = t1
        dgamma[j] = t2
        k[j] = gamma[j] * invstd[j] / nf
    # Pass 2: dx; in place on dy through one name (see _k_bias_activation_forward).
    if inplace:
        for i in prange(n):
            xi = x[i]
            di = dy[i]
            for j in range(c):
                di[j] = _bn_input_grad(_load(xi[j], rx), _load(di[j], rdy), mean[j],
                                       invstd[j], gamma[j], beta[j], k[j], nf, dbeta[j],
                                       dgamma[j], relu, zero)
    else:
        for i in prange(n):
            xi = x[i]
            di = dy[i]
            oi = out[i]
            for j in range(c):
                oi[j] = _bn_input_grad(_load(xi[j], rx), _load(di[j], rdy), mean[j],
                                       invstd[j], gamma[j], beta[j], k[j], nf, dbeta[j],
                                       dgamma[j], relu, zero)


_KERNELS = KernelSet(globals(), kernels=(
    "batchnorm_forward_train", "batchnorm_forward_eval", "batchnorm_backward"),
    helpers=("_reduction_blocks", "_relu_if", "_bn_input_grad", "_load"))


def _check_rounding(wrong, name, x):
    if wrong:
        raise ValueError(f"{name}: bfloat16 rounding on load needs float32 input, got "
                         f"{x.dtype}")


def batchnorm_scratch_shape(n, c):
    """Shape of the ``scratch`` the CUDA launchers need; the CPU kernels need none: ``(0,)``."""
    return (0,)


def batchnorm_forward_train(x, gamma, beta, running_mean, running_var, eps, momentum,
                            relu=False, *, out, mean, invstd, scratch=None,
                            round_input=False):
    r"""Training-mode batch normalization (+ optional ReLU); updates running stats in place.

    .. math::
        \hat x = (x - \mu) / \sqrt{\sigma^2 + \epsilon}, \quad y = \gamma \hat x + \beta

    with the biased batch variance; ``running_var`` moves towards the unbiased one
    (PyTorch's momentum convention). Mean and variance come from one pass of shifted sums
    accumulated in float64 (stable when ``|mean| >> std``).

    Parameters
    ----------
    x : ndarray, shape (n, c), n >= 2
    gamma, beta : ndarray, shape (c,)
    running_mean, running_var : ndarray, shape (c,)
        Updated in place.
    eps, momentum : float
    relu : bool
        Output ``max(y, 0)``.
    out : ndarray, shape (n, c)
        Receives ``y``; may be ``x``.
    mean, invstd : ndarray, shape (c,)
        Receive the batch mean and ``1 / sqrt(var + eps)`` for the backward pass.
    scratch : ignored
        For the CUDA calling convention.
    round_input : bool
        ``x`` (float32) is read as rounded to bfloat16 (as if
        ``kernels.cast.cpu.round_bfloat16`` had run on it first): mixed precision leaves
        that rounding to its reader instead of a pass of its own.

    Returns
    -------
    out, mean, invstd : ndarray
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x must be 2-D with at least 2 rows, got shape {x.shape}")
    c = (x.shape[1],)
    check(x, gamma, beta, running_mean, running_var, out, mean, invstd,
          shapes=(x.shape, c, c, c, c, x.shape, c, c),
          outputs=(out, running_mean, running_var, mean, invstd))
    _check_rounding(round_input and x.dtype != np.float32, "round_input", x)
    x = writable_input(x)
    _KERNELS.get("batchnorm_forward_train", x.size, FORWARD_PARALLEL_THRESHOLD)(
        x, gamma, beta, running_mean, running_var, float(eps), float(momentum), bool(relu),
        out, mean, invstd, same_memory(x, out), bool(round_input))
    return out, mean, invstd


def batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps, relu=False, *,
                           out):
    """Inference-mode batch normalization with the running statistics, one pass.

    Parameters
    ----------
    x : ndarray, shape (n, c), any n
    gamma, beta, running_mean, running_var : ndarray, shape (c,)
    eps : float
    relu : bool
    out : ndarray, shape (n, c)
        Receives ``y``; may be ``x``.

    Returns
    -------
    out : ndarray
    """
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D, got shape {x.shape}")
    c = (x.shape[1],)
    check(x, gamma, beta, running_mean, running_var, out,
          shapes=(x.shape, c, c, c, c, x.shape), outputs=(out,))
    x = writable_input(x)
    _KERNELS.get("batchnorm_forward_eval", x.size, FORWARD_PARALLEL_THRESHOLD)(
        x, gamma, beta, running_mean, running_var, x.dtype.type(eps), bool(relu), out,
        same_memory(x, out))
    return out


def batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu=False, *, out, dgamma, dbeta,
                       scratch=None, round_x=False, round_dy=False):
    r"""Gradients of training-mode batch normalization (+ optional fused ReLU).

    .. math::
        d\beta = \sum_n dy, \quad d\gamma = \sum_n dy\,\hat x, \quad
        dx = \frac{\gamma\,\mathrm{invstd}}{n}\,(n\,dy - d\beta - \hat x\, d\gamma)

    With ``relu=True`` ``dy`` is first masked where ``gamma * xhat + beta <= 0`` (recomputed
    inside both passes, never stored).

    Parameters
    ----------
    dy, x : ndarray, shape (n, c)
    gamma, beta, mean, invstd : ndarray, shape (c,)
    relu : bool
    out : ndarray, shape (n, c)
        Receives ``dx``; may be ``dy``.
    dgamma, dbeta : ndarray, shape (c,)
        Receive the parameter gradients (overwritten, not accumulated).
    scratch : ignored
        For the CUDA calling convention.
    round_x, round_dy : bool
        Read ``x`` / ``dy`` (float32) as rounded to bfloat16 (see
        :func:`batchnorm_forward_train`'s ``round_input``).

    Returns
    -------
    out, dgamma, dbeta : ndarray
    """
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D, got shape {x.shape}")
    c = (x.shape[1],)
    check(x, dy, gamma, beta, mean, invstd, out, dgamma, dbeta,
          shapes=(x.shape, x.shape, c, c, c, c, x.shape, c, c), outputs=(out, dgamma, dbeta))
    _check_rounding((round_x or round_dy) and x.dtype != np.float32, "round_x/round_dy", x)
    dy = writable_input(dy)
    _KERNELS.get("batchnorm_backward", x.size, COMPUTE_PARALLEL_THRESHOLD)(
        dy, x, gamma, beta, mean, invstd, bool(relu), out, dgamma, dbeta,
        same_memory(dy, out), bool(round_x), bool(round_dy))
    return out, dgamma, dbeta
