"""LARS and LAMB as Numba ``@njit`` kernels over NumPy arrays, updated in place.

Each op takes two passes over the flattened parameter: the first updates the state (LAMB's
moments) and accumulates the two squared L2 norms in float64, the second applies the step
scaled by the trust ratio. LAMB's direction ``r`` is recomputed in the second pass rather
than stored, so no scratch array of the parameter's size is needed. The loops are serial:
the sums are accumulated in index order, so results do not depend on thread count.

Preconditions (checked; ``TypeError`` for a non-NumPy argument, ``ValueError`` otherwise): every array float32 or float64 (one
dtype), C-contiguous, of the parameter's shape. Scalars are cast to that dtype, so float32
arrays compute in float32 as the reference does; only the norms accumulate in float64.

Numba is imported on the first call (:func:`kernels`), never at import.
"""

from __future__ import annotations

import math
import threading

import numpy as np

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


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
    for i in range(param.shape[0]):
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
    for i in range(param.shape[0]):
        p = param[i]
        d = local * (grad[i] + weight_decay * p)
        b = momentum * momentum_buffer[i] + d
        momentum_buffer[i] = b
        param[i] = p - lr * b


_NAMES = ("lamb_moments", "lamb_apply", "squared_norms", "lars_apply")
_built = {}
_lock = threading.Lock()


def kernels():
    """``{name: jitted function}``, built (``numba.njit(cache=True)``) on first use."""
    if not _built:
        with _lock:
            if not _built:
                import numba

                jitted = {name: numba.njit(cache=True, error_model="numpy")(
                    globals()[f"_k_{name}"]) for name in _NAMES}
                _built.update(jitted)
    return _built


def _flat_checked(name, param, **others):
    for label, a in (("param", param), *others.items()):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: {label} must be a NumPy array, got {type(a).__name__}")
        if a.dtype not in _DTYPES or a.dtype != param.dtype:
            raise ValueError(f"{name}: {label} has dtype {a.dtype}, expected float32 or "
                             f"float64 matching param ({param.dtype})")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name}: {label} must be C-contiguous")
        if a.shape != param.shape:
            raise ValueError(f"{name}: {label} has shape {a.shape}, expected {param.shape}")
    if not param.flags.writeable:
        raise ValueError(f"{name}: param must be writable")
    return [a.reshape(-1) for a in (param, *others.values())]


def _ratio(numerator, w_norm, u_norm, denominator):
    """``numerator / denominator`` (Python floats), or 1 when a norm is 0."""
    if w_norm > 0 and u_norm > 0:
        return numerator / denominator
    return 1.0


def lamb_update(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1=0.9, beta2=0.999,
                eps=1e-6, weight_decay=0.0, adapt=True):
    """In-place LAMB step; see :func:`dualnn.kernels.trust_ratio.reference.lamb_update`.

    Parameters
    ----------
    param, grad, exp_avg, exp_avg_sq : ndarray, any shape (the same)
        ``param`` and the moments are updated in place.

    Returns
    -------
    float
        The trust ratio used (1.0 when ``adapt`` is false or a norm is 0).
    """
    p, g, m, v = _flat_checked("lamb_update", param, grad=grad, exp_avg=exp_avg,
                               exp_avg_sq=exp_avg_sq)
    if p.size == 0:
        return 1.0
    t = param.dtype.type
    k = kernels()
    bc1, bc2 = t(1 - beta1 ** step), t(1 - beta2 ** step)
    w_sq, r_sq = k["lamb_moments"](p, g, m, v, t(beta1), t(1 - beta1), t(beta2), t(1 - beta2),
                                   bc1, bc2, t(eps), t(weight_decay))
    phi = 1.0
    if adapt:
        w_norm, r_norm = math.sqrt(w_sq), math.sqrt(r_sq)
        phi = _ratio(w_norm, w_norm, r_norm, r_norm)
    k["lamb_apply"](p, m, v, t(lr * t(phi)), bc1, bc2, t(eps), t(weight_decay))
    return phi


def lars_update(param, grad, momentum_buffer, *, lr, momentum=0.9, weight_decay=0.0,
                trust_coefficient=0.001, eps=1e-8, adapt=True):
    """In-place LARS step; see :func:`dualnn.kernels.trust_ratio.reference.lars_update`.

    Parameters
    ----------
    param, grad, momentum_buffer : ndarray, any shape (the same)
        ``param`` and ``momentum_buffer`` are updated in place.

    Returns
    -------
    float
        The local rate used (1.0 when ``adapt`` is false or a norm is 0).
    """
    p, g, b = _flat_checked("lars_update", param, grad=grad, momentum_buffer=momentum_buffer)
    if p.size == 0:
        return 1.0
    t = param.dtype.type
    k = kernels()
    local = 1.0
    if adapt:
        w_sq, g_sq = k["squared_norms"](p, g)
        w_norm, g_norm = math.sqrt(w_sq), math.sqrt(g_sq)
        local = _ratio(trust_coefficient * w_norm, w_norm, g_norm,
                       g_norm + weight_decay * w_norm + eps)
    k["lars_apply"](p, g, b, t(lr), t(momentum), t(weight_decay), t(local))
    return local
