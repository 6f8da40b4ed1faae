"""LARS and LAMB as Numba kernels on NumPy arrays, updated in place (twins of ``reference.py``).

Each op takes two passes over the flattened parameter: the first updates the state (LAMB's
moments) and accumulates the two squared L2 norms in float64, the second applies the step
scaled by the trust ratio. LAMB's direction ``r`` is recomputed in the second pass rather
than stored, so no scratch array of the parameter's size is needed.

The norm passes are serial: the sums are accumulated in index order, so results do not
depend on the thread count. The apply passes are elementwise and run their parallel build
from the thresholds of :mod:`dualnn.kernels._numba`.

The arguments are checked once here (:func:`dualnn.kernels._numba.check`: float32/float64,
one dtype, C-contiguous, the parameter's shape, writable state; ``ValueError`` naming the
op otherwise). Scalars are cast to the arrays' dtype, so float32 arrays compute in float32
as the reference does; only the norms accumulate in float64. Numba is imported on the first
call, never at import.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from .._numba import COMPUTE_PARALLEL_THRESHOLD, PARALLEL_THRESHOLD, KernelSet, check, prange
from ..optim.cpu import _scaling

_SERIAL = math.inf
"""Threshold that always picks the serial build (the order-dependent norm passes)."""


def _k_lamb_moments(param, grad, exp_avg, exp_avg_sq, beta1, one_minus_beta1, beta2,
                    one_minus_beta2, bias_correction1, bias_correction2, eps, weight_decay):
    w_sq = 0.0
    r_sq = 0.0
    for i in range(param.shape[0]):
        p = param[i]
        g = grad[i]
        m = beta1 * exp_avg[i] + one_minus_beta1 * g
        v = beta2 * exp_avg_sq[i] + one_minus_beta2 * (g * g)
        exp_avg[i] = m
        exp_avg_sq[i] = v
        r = (m / bias_correction1) / (np.sqrt(v / bias_correction2) + eps) + weight_decay * p
        w_sq += float(p) * float(p)
        r_sq += float(r) * float(r)
    return w_sq, r_sq


def _k_lamb_apply(param, exp_avg, exp_avg_sq, scale, bias_correction1, bias_correction2, eps,
                  weight_decay):
    # scale = lr * phi; r exactly as in _k_lamb_moments
    for i in prange(param.shape[0]):
        p = param[i]
        r = ((exp_avg[i] / bias_correction1) / (np.sqrt(exp_avg_sq[i] / bias_correction2) + eps)
             + weight_decay * p)
        param[i] = p - scale * r


def _k_squared_norms(a, b):
    a_sq = 0.0
    b_sq = 0.0
    for i in range(a.shape[0]):
        a_sq += float(a[i]) * float(a[i])
        b_sq += float(b[i]) * float(b[i])
    return a_sq, b_sq


def _k_lars_apply(param, grad, momentum_buffer, lr, momentum, weight_decay, local):
    for i in prange(param.shape[0]):
        p = param[i]
        d = local * (grad[i] + weight_decay * p)
        b = momentum * momentum_buffer[i] + d
        momentum_buffer[i] = b
        param[i] = p - lr * b


_KERNELS = KernelSet(globals(), kernels=(
    "lamb_moments", "lamb_apply", "squared_norms", "lars_apply"))


def _flat_checked(name, param, *state):
    """Flattened views of ``param`` and its state once :func:`check` passed."""
    try:
        check(param, *state, shapes=(param.shape,) * (1 + len(state)),
              outputs=[param, *state[1:]])
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    return [a.reshape(-1) for a in (param, *state)]


def _ratio(numerator, w_norm, u_norm, denominator):
    """``numerator / denominator`` (Python floats), or 1 when a norm is 0."""
    if w_norm > 0 and u_norm > 0:
        return numerator / denominator
    return 1.0


def lamb_update(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1=0.9, beta2=0.999,
                eps=1e-6, weight_decay=0.0, adapt=True, inv_scale=None, found_inf=None,
                skipped=None):
    """In-place LAMB step; see :func:`dualnn.kernels.trust_ratio.reference.lamb_update`.

    Parameters
    ----------
    param, grad, exp_avg, exp_avg_sq : ndarray, any shape (the same)
        ``param`` and the moments are updated in place.
    inv_scale, found_inf, skipped : ndarray (1,), optional
        A loss scaler's ``1 / scale`` (the gradient is scaled into a copy), overflow flag
        (when set nothing changes) and skipped-step count (the bias corrections use
        ``step - skipped[0]``); read here: the CPU.

    Returns
    -------
    float
        The trust ratio used (1.0 when ``adapt`` is false, a norm is 0 or the step was
        skipped).
    """
    p, g, m, v = _flat_checked("lamb_update", param, grad, exp_avg, exp_avg_sq)
    skip, grad, step = _scaling(param, grad, step, inv_scale, found_inf, skipped)
    if p.size == 0 or skip:
        return 1.0
    g = grad.reshape(-1)
    t = param.dtype.type
    bc1, bc2 = t(1 - beta1 ** step), t(1 - beta2 ** step)
    w_sq, r_sq = _KERNELS.get("lamb_moments", p.size, _SERIAL)(
        p, g, m, v, t(beta1), t(1 - beta1), t(beta2), t(1 - beta2), bc1, bc2, t(eps),
        t(weight_decay))
    phi = 1.0
    if adapt:
        w_norm, r_norm = math.sqrt(w_sq), math.sqrt(r_sq)
        phi = _ratio(w_norm, w_norm, r_norm, r_norm)
    _KERNELS.get("lamb_apply", p.size, COMPUTE_PARALLEL_THRESHOLD)(
        p, m, v, t(lr * t(phi)), bc1, bc2, t(eps), t(weight_decay))
    return phi


def lars_update(param, grad, momentum_buffer, *, lr, momentum=0.9, weight_decay=0.0,
                trust_coefficient=0.001, eps=1e-8, adapt=True, found_inf=None):
    """In-place LARS step; see :func:`dualnn.kernels.trust_ratio.reference.lars_update`.

    Parameters
    ----------
    param, grad, momentum_buffer : ndarray, any shape (the same)
        ``param`` and ``momentum_buffer`` are updated in place.
    found_inf : ndarray (1,), optional
        A loss scaler's overflow flag (read here: the CPU): when set, nothing changes.

    Returns
    -------
    float
        The local rate used (1.0 when ``adapt`` is false or a norm is 0).
    """
    p, g, b = _flat_checked("lars_update", param, grad, momentum_buffer)
    if p.size == 0 or (found_inf is not None and int(np.asarray(found_inf).reshape(-1)[0])):
        return 1.0
    t = param.dtype.type
    local = 1.0
    if adapt:
        w_sq, g_sq = _KERNELS.get("squared_norms", p.size, _SERIAL)(p, g)
        w_norm, g_norm = math.sqrt(w_sq), math.sqrt(g_sq)
        local = _ratio(trust_coefficient * w_norm, w_norm, g_norm,
                       g_norm + weight_decay * w_norm + eps)
    _KERNELS.get("lars_apply", p.size, PARALLEL_THRESHOLD)(
        p, g, b, t(lr), t(momentum), t(weight_decay), t(local))
    return local


# ------------------------------------------------------------ segmented (flat buffers)

def _segment_bounds(name, size, offsets, adapt):
    """``[(lo, hi, adapt)]`` once ``offsets`` (n + 1) and ``adapt`` (n) describe ``size``."""
    offsets = [int(o) for o in np.asarray(offsets).reshape(-1)]
    adapt = [bool(a) for a in np.asarray(adapt).reshape(-1)]
    if len(offsets) != len(adapt) + 1 or offsets[0] != 0 or offsets[-1] != size or any(
            b < a for a, b in itertools.pairwise(offsets)):
        raise ValueError(f"{name}: offsets must rise from 0 to the buffer size {size} with "
                         f"one entry more than adapt ({len(adapt)} flags); got {offsets}")
    return [(offsets[k], offsets[k + 1], adapt[k]) for k in range(len(adapt))]


def lamb_update_segmented(param, grad, exp_avg, exp_avg_sq, *, offsets, adapt, step, lr,
                          beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0, inv_scale=None,
                          found_inf=None, skipped=None):
    """In-place LAMB over flat buffers, one trust ratio per segment; see
    :func:`dualnn.kernels.trust_ratio.reference.lamb_update_segmented`.

    Runs :func:`lamb_update` on each segment's views. With ``inv_scale`` (float or array
    (1,)) the gradient is scaled first (into a copy); with ``found_inf`` (int array (1,),
    updated in place) the step is skipped when the flag is set or the scaled gradient is
    not finite; with ``skipped`` (int array (1,)) the bias corrections use
    ``step - skipped[0]``.

    Parameters
    ----------
    param, grad, exp_avg, exp_avg_sq : ndarray (total,)
    offsets : sequence of int (n + 1,)
    adapt : sequence of bool (n,)

    Returns
    -------
    ndarray (n,) float64
        Each segment's trust ratio (all 1 when the step was skipped).
    """
    bounds = _segment_bounds("lamb_update_segmented", param.size, offsets, adapt)
    ratios = np.ones(len(bounds))
    if inv_scale is not None:
        grad = grad * param.dtype.type(np.asarray(inv_scale).reshape(-1)[0])
    if skipped is not None:
        step = int(step) - int(np.asarray(skipped).reshape(-1)[0])
    if found_inf is not None and (found_inf.reshape(-1)[0] != 0
                                  or not np.isfinite(grad).all()):
        found_inf.reshape(-1)[0] = 1
        return ratios
    for k, (lo, hi, on) in enumerate(bounds):
        ratios[k] = lamb_update(param[lo:hi], grad[lo:hi], exp_avg[lo:hi], exp_avg_sq[lo:hi],
                                step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                                weight_decay=weight_decay if on else 0.0, adapt=on)
    return ratios


def lars_update_segmented(param, grad, momentum_buffer, *, offsets, adapt, lr, momentum=0.9,
                          weight_decay=0.0, trust_coefficient=0.001, eps=1e-8, found_inf=None):
    """In-place LARS over flat buffers, one local rate per segment; see
    :func:`dualnn.kernels.trust_ratio.reference.lars_update_segmented`.

    Returns
    -------
    ndarray (n,) float64
        Each segment's local rate.
    """
    bounds = _segment_bounds("lars_update_segmented", param.size, offsets, adapt)
    ratios = np.ones(len(bounds))
    for k, (lo, hi, on) in enumerate(bounds):
        ratios[k] = lars_update(param[lo:hi], grad[lo:hi], momentum_buffer[lo:hi], lr=lr,
                                momentum=momentum, weight_decay=weight_decay if on else 0.0,
                                trust_coefficient=trust_coefficient, eps=eps, adapt=on,
                                found_inf=found_inf)
    return ratios
