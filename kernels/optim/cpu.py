"""The optimizer updates as Numba kernels on NumPy arrays (twins of ``reference.py``).

Each ``*_update`` is one in-place pass over the flattened parameter and its state. The
arguments are checked once here (float32/float64, one dtype, C-contiguous, same shape,
writable). Scalars (learning rates, betas, ``eps``...) are cast to the arrays' dtype
before the call, so float32 kernels compute in float32 as the reference does with NumPy's
weak Python scalars.

The loss-scaling arguments (``inv_scale``, ``found_inf``, ``skipped``: arrays of shape (1,),
see :mod:`dualnn.kernels.optim.reference`) are read here, on the host: on the CPU a read
is free. A set ``found_inf`` returns before anything changes; ``inv_scale`` scales a copy
of the gradient; ``skipped`` is subtracted from ``step``.
"""

from __future__ import annotations

import math

import numpy as np

from .._numba import COMPUTE_PARALLEL_THRESHOLD, KernelSet, check, prange


def _k_sgd_update(param, grad, momentum_buffer, lr, momentum, one_minus_dampening,
                  weight_decay, use_weight_decay, use_momentum, nesterov, first_step):
    for i in prange(param.shape[0]):
        p = param[i]
        g = grad[i]
        if use_weight_decay:
            g = g + weight_decay * p
        if use_momentum:
            if first_step:
                buf = g
            else:
                buf = momentum * momentum_buffer[i] + one_minus_dampening * g
            momentum_buffer[i] = buf
            direction = g + momentum * buf if nesterov else buf
        else:
            direction = g
        param[i] = p - lr * direction


def _k_adam_update(param, grad, exp_avg, exp_avg_sq, beta1, one_minus_beta1, beta2,
                   one_minus_beta2, step_size, bias_correction2_sqrt, eps, weight_decay,
                   decay_factor, mode):
    # mode 0: no weight decay; 1: L2 added to the gradient (Adam); 2: decoupled (AdamW).
    for i in prange(param.shape[0]):
        p = param[i]
        g = grad[i]
        if mode == 2:
            p = p * decay_factor
        elif mode == 1:
            g = g + weight_decay * p
        m = beta1 * exp_avg[i] + one_minus_beta1 * g
        v = beta2 * exp_avg_sq[i] + one_minus_beta2 * (g * g)
        exp_avg[i] = m
        exp_avg_sq[i] = v
        denom = math.sqrt(v) / bias_correction2_sqrt + eps
        param[i] = p - step_size * (m / denom)


def _k_rmsprop_update(param, grad, square_avg, momentum_buffer, grad_avg, lr, alpha,
                      one_minus_alpha, eps, weight_decay, use_weight_decay, momentum,
                      use_momentum, centered):
    for i in prange(param.shape[0]):
        p = param[i]
        g = grad[i]
        if use_weight_decay:
            g = g + weight_decay * p
        v = alpha * square_avg[i] + one_minus_alpha * (g * g)
        square_avg[i] = v
        if centered:
            ga = alpha * grad_avg[i] + one_minus_alpha * g
            grad_avg[i] = ga
            avg = math.sqrt(v - ga * ga) + eps
        else:
            avg = math.sqrt(v) + eps
        if use_momentum:
            buf = momentum * momentum_buffer[i] + g / avg
            momentum_buffer[i] = buf
            param[i] = p - lr * buf
        else:
            param[i] = p - lr * (g / avg)


def _k_adagrad_update(param, grad, state_sum, clr, eps, weight_decay, use_weight_decay):
    for i in prange(param.shape[0]):
        p = param[i]
        g = grad[i]
        if use_weight_decay:
            g = g + weight_decay * p
        s = state_sum[i] + g * g
        state_sum[i] = s
        param[i] = p - clr * (g / (math.sqrt(s) + eps))


def _k_adadelta_update(param, grad, square_avg, acc_delta, lr, rho, one_minus_rho, eps,
                       weight_decay, use_weight_decay):
    for i in prange(param.shape[0]):
        p = param[i]
        g = grad[i]
        if use_weight_decay:
            g = g + weight_decay * p
        v = rho * square_avg[i] + one_minus_rho * (g * g)
        square_avg[i] = v
        u = acc_delta[i]
        delta = math.sqrt(u + eps) / math.sqrt(v + eps) * g
        acc_delta[i] = rho * u + one_minus_rho * (delta * delta)
        param[i] = p - lr * delta


_KERNELS = KernelSet(globals(), kernels=(
    "sgd_update", "adam_update", "rmsprop_update", "adagrad_update", "adadelta_update"))


def _scaling(param, grad, step, inv_scale, found_inf, skipped):
    """``(skip, grad, step)`` after the loss-scaling arguments (host reads: the CPU)."""
    if found_inf is not None and int(np.asarray(found_inf).reshape(-1)[0]) != 0:
        return True, grad, step
    if inv_scale is not None:
        grad = np.ascontiguousarray(grad * np.asarray(inv_scale).reshape(())
                                    .astype(param.dtype))
    if skipped is not None and step is not None:
        step = int(step) - int(np.asarray(skipped).reshape(-1)[0])
    return False, grad, step


def _flat_state(param, *arrays):
    """Flattened views of ``param`` and its same-shaped state arrays (``None`` -> empty)."""
    state = [a for a in arrays if a is not None]
    check(param, *state, shapes=(param.shape,) * (1 + len(state)),
          outputs=[param] + state[1:])
    empty = np.empty(0, dtype=param.dtype)
    return [param.reshape(-1)] + [empty if a is None else a.reshape(-1) for a in arrays]


def sgd_update(param, grad, momentum_buffer, *, lr, momentum=0.0, dampening=0.0,
               nesterov=False, weight_decay=0.0, first_step=False, step=None, inv_scale=None,
               found_inf=None, skipped=None):
    """In-place SGD step (momentum, dampening, Nesterov, L2 weight decay) as ``torch.optim.SGD``.

    Parameters
    ----------
    param, grad : ndarray, any shape (same)
        ``param`` is updated in place.
    momentum_buffer : ndarray or None
        Updated in place; may be ``None`` when ``momentum == 0``.
    lr, momentum, dampening, nesterov, weight_decay, first_step, step
        As :func:`dualnn.kernels.reference.sgd_update`.
    inv_scale, found_inf, skipped : ndarray (1,), optional
        Loss scaling, as :mod:`dualnn.kernels.optim.reference`.
    """
    skip, grad, step = _scaling(param, grad, step, inv_scale, found_inf, skipped)
    if skip:
        return
    if skipped is not None and step is not None:
        first_step = step == 1
    use_momentum = momentum != 0
    if use_momentum and momentum_buffer is None:
        raise ValueError("momentum != 0 needs a momentum_buffer")
    p, g, buf = _flat_state(param, grad, momentum_buffer if use_momentum else None)
    t = param.dtype.type
    _KERNELS.get("sgd_update", p.size)(
        p, g, buf, t(lr), t(momentum), t(1 - dampening), t(weight_decay),
        weight_decay != 0, use_momentum, bool(nesterov), bool(first_step))


def adam_update(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1=0.9, beta2=0.999,
                eps=1e-8, weight_decay=0.0, decoupled=False, inv_scale=None, found_inf=None,
                skipped=None):
    """In-place Adam (L2 in the gradient) or AdamW (``decoupled=True``) step, one pass.

    Parameters
    ----------
    param, grad, exp_avg, exp_avg_sq : ndarray, any shape (same)
        ``param`` and the moments are updated in place.
    step : int
        This update's number, counting from 1.
    lr, beta1, beta2, eps, weight_decay, decoupled
        As :func:`dualnn.kernels.reference.adam_update`.
    inv_scale, found_inf, skipped : ndarray (1,), optional
        Loss scaling, as :mod:`dualnn.kernels.optim.reference`.
    """
    skip, grad, step = _scaling(param, grad, step, inv_scale, found_inf, skipped)
    if skip:
        return
    p, g, m, v = _flat_state(param, grad, exp_avg, exp_avg_sq)
    t = param.dtype.type
    mode = 0 if weight_decay == 0 else (2 if decoupled else 1)
    _KERNELS.get("adam_update", p.size, COMPUTE_PARALLEL_THRESHOLD)(
        p, g, m, v, t(beta1), t(1 - beta1), t(beta2), t(1 - beta2),
        t(lr / (1 - beta1 ** step)), t(math.sqrt(1 - beta2 ** step)), t(eps),
        t(weight_decay), t(1 - lr * weight_decay), mode)


def rmsprop_update(param, grad, square_avg, momentum_buffer, grad_avg, *, lr, alpha=0.99,
                   eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, inv_scale=None,
                   found_inf=None, skipped=None):
    """In-place RMSprop step (optional momentum and centering) as ``torch.optim.RMSprop``.

    Parameters
    ----------
    param, grad, square_avg : ndarray, any shape (same)
    momentum_buffer : ndarray or None
        Needed when ``momentum > 0``.
    grad_avg : ndarray or None
        Needed when ``centered``.
    lr, alpha, eps, weight_decay, momentum, centered
        As :func:`dualnn.kernels.reference.rmsprop_update`.
    inv_scale, found_inf, skipped : ndarray (1,), optional
        Loss scaling, as :mod:`dualnn.kernels.optim.reference`.
    """
    skip, grad, _ = _scaling(param, grad, None, inv_scale, found_inf, skipped)
    if skip:
        return
    use_momentum = momentum > 0
    if use_momentum and momentum_buffer is None:
        raise ValueError("momentum > 0 needs a momentum_buffer")
    if centered and grad_avg is None:
        raise ValueError("centered=True needs grad_avg")
    p, g, sa, buf, ga = _flat_state(param, grad, square_avg,
                                    momentum_buffer if use_momentum else None,
                                    grad_avg if centered else None)
    t = param.dtype.type
    _KERNELS.get("rmsprop_update", p.size)(
        p, g, sa, buf, ga, t(lr), t(alpha), t(1 - alpha), t(eps), t(weight_decay),
        weight_decay != 0, t(momentum), use_momentum, bool(centered))


def adagrad_update(param, grad, state_sum, *, step, lr, lr_decay=0.0, weight_decay=0.0,
                   eps=1e-10, inv_scale=None, found_inf=None, skipped=None):
    """In-place Adagrad step as ``torch.optim.Adagrad``.

    Parameters
    ----------
    param, grad, state_sum : ndarray, any shape (same)
    step, lr, lr_decay, weight_decay, eps
        As :func:`dualnn.kernels.reference.adagrad_update`.
    inv_scale, found_inf, skipped : ndarray (1,), optional
        Loss scaling, as :mod:`dualnn.kernels.optim.reference`.
    """
    skip, grad, step = _scaling(param, grad, step, inv_scale, found_inf, skipped)
    if skip:
        return
    p, g, s = _flat_state(param, grad, state_sum)
    t = param.dtype.type
    _KERNELS.get("adagrad_update", p.size)(
        p, g, s, t(lr / (1 + (step - 1) * lr_decay)), t(eps), t(weight_decay),
        weight_decay != 0)


def adadelta_update(param, grad, square_avg, acc_delta, *, lr=1.0, rho=0.9, eps=1e-6,
                    weight_decay=0.0, inv_scale=None, found_inf=None, skipped=None):
    """In-place Adadelta step as ``torch.optim.Adadelta``.

    Parameters
    ----------
    param, grad, square_avg, acc_delta : ndarray, any shape (same)
    lr, rho, eps, weight_decay
        As :func:`dualnn.kernels.reference.adadelta_update`.
    inv_scale, found_inf, skipped : ndarray (1,), optional
        Loss scaling, as :mod:`dualnn.kernels.optim.reference`.
    """
    skip, grad, _ = _scaling(param, grad, None, inv_scale, found_inf, skipped)
    if skip:
        return
    p, g, v, u = _flat_state(param, grad, square_avg, acc_delta)
    t = param.dtype.type
    _KERNELS.get("adadelta_update", p.size)(
        p, g, v, u, t(lr), t(rho), t(1 - rho), t(eps), t(weight_decay), weight_decay != 0)

