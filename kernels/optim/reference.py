"""Readable definitions of the optimizer-update ops, written once for any Array API namespace.

Each function takes the array namespace ``xp`` first and returns new arrays; it never
writes into its arguments. Only Array API standard calls are used, so this runs on NumPy,
CuPy and ``array_api_strict`` alike. The CPU (``cpu.py``) and CUDA (``cuda.py``) kernels
beside this module compute the same results; tests compare them with these twins.

Scalars are Python floats; ``step`` counts from 1 (this update). Each function returns the
new parameter followed by the new state, in argument order. Arrays have any shape (a
parameter and its state, same shape).

Loss scaling (dynamic float16 loss scaling, see :class:`dualnn.precision.LossScaler`):
every update also takes three optional device values, all arrays of shape (1,):

``inv_scale`` (the parameters' dtype)
    The gradient used is ``grad * inv_scale[0]``, before weight decay.
``found_inf`` (int32)
    When nonzero, the step is skipped: everything is returned unchanged.
``skipped`` (int32)
    Steps skipped before this one: the update's step number (bias corrections,
    Adagrad's decay, SGD's first step) is ``step - skipped[0]``, so a skipped step never
    advances it although the host's ``step`` counted it.
"""

from __future__ import annotations

import math


def _unscaled(xp, grad, inv_scale):
    return grad if inv_scale is None else grad * xp.reshape(inv_scale, ())


def _step_number(xp, step, skipped):
    """``step - skipped[0]`` as a float64 0-d array (``step`` itself without ``skipped``)."""
    if skipped is None:
        return step
    return xp.astype(xp.reshape(skipped, ()), xp.float64) * -1.0 + float(step)


def _pow(xp, base, t):
    return base ** t if isinstance(t, int) else xp.pow(xp.asarray(base, dtype=xp.float64), t)


def _typed(xp, value, like):
    """A Python float as is; a 0-d array cast to ``like``'s dtype (as a weak scalar)."""
    return value if isinstance(value, float) else xp.astype(value, like.dtype)


def _skip(xp, found_inf, old, new):
    """``new`` (a tuple), or ``old`` where ``found_inf`` is set (``None`` entries kept)."""
    if found_inf is None:
        return new
    found = xp.reshape(found_inf, ()) != 0
    return tuple(n if o is None or n is None else xp.where(found, o, n)
                 for o, n in zip(old, new))


def sgd_update(xp, param, grad, momentum_buffer, *, lr, momentum=0.0, dampening=0.0,
               nesterov=False, weight_decay=0.0, first_step=False, step=None, inv_scale=None,
               found_inf=None, skipped=None):
    """SGD with momentum, Nesterov and L2 weight decay, as ``torch.optim.SGD``.

    ``g = grad + wd * p``; ``buf = g`` on the first step, else
    ``momentum * buf + (1 - dampening) * g``; the step direction is ``g + momentum * buf``
    (Nesterov) or ``buf``; ``p -= lr * direction``. With ``momentum == 0`` the buffer is
    returned unchanged and may be ``None``. With ``skipped`` (and ``step``), the first
    step is the one where ``step - skipped[0] == 1`` (``first_step`` is then ignored).
    """
    grad = _unscaled(xp, grad, inv_scale)
    g = grad + weight_decay * param if weight_decay != 0 else grad
    if momentum != 0:
        later = momentum * momentum_buffer + (1 - dampening) * g
        if skipped is not None and step is not None:
            buf = xp.where(_step_number(xp, step, skipped) == 1.0, g, later)
        else:
            buf = g if first_step else later
        direction = g + momentum * buf if nesterov else buf
    else:
        buf = momentum_buffer
        direction = g
    return _skip(xp, found_inf, (param, momentum_buffer), (param - lr * direction, buf))


def adam_update(xp, param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1=0.9, beta2=0.999,
                eps=1e-8, weight_decay=0.0, decoupled=False, inv_scale=None, found_inf=None,
                skipped=None):
    """Adam (``decoupled=False``, L2 added to the gradient) or AdamW, as ``torch.optim``.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``; AdamW first
    scales ``p *= 1 - lr * wd``.
    """
    old = (param, exp_avg, exp_avg_sq)
    grad = _unscaled(xp, grad, inv_scale)
    if weight_decay != 0:
        if decoupled:
            param = param * (1 - lr * weight_decay)
        else:
            grad = grad + weight_decay * param
    m = beta1 * exp_avg + (1 - beta1) * grad
    v = beta2 * exp_avg_sq + (1 - beta2) * (grad * grad)
    t = _step_number(xp, step, skipped)
    if isinstance(t, int):
        step_size = lr / (1 - beta1**t)
        bias_correction2_sqrt = math.sqrt(1 - beta2**t)
    else:  # computed in float64, then used like a Python scalar of the arrays' dtype
        step_size = _typed(xp, lr / (1 - _pow(xp, beta1, t)), param)
        bias_correction2_sqrt = _typed(xp, xp.sqrt(1 - _pow(xp, beta2, t)), param)
    denom = xp.sqrt(v) / bias_correction2_sqrt + eps
    return _skip(xp, found_inf, old, (param - step_size * (m / denom), m, v))


def rmsprop_update(xp, param, grad, square_avg, momentum_buffer, grad_avg, *, lr, alpha=0.99,
                   eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, inv_scale=None,
                   found_inf=None, skipped=None):
    """RMSprop as ``torch.optim.RMSprop`` (optional momentum and centering).

    ``v = alpha v + (1 - alpha) g^2``; centered: ``ga = alpha ga + (1 - alpha) g`` and
    ``avg = sqrt(v - ga^2) + eps``, else ``avg = sqrt(v) + eps``; with momentum
    ``buf = momentum buf + g / avg`` and ``p -= lr buf``, else ``p -= lr g / avg``.
    ``momentum_buffer`` and ``grad_avg`` may be ``None`` when unused.
    """
    old = (param, square_avg, momentum_buffer, grad_avg)
    grad = _unscaled(xp, grad, inv_scale)
    g = grad + weight_decay * param if weight_decay != 0 else grad
    v = alpha * square_avg + (1 - alpha) * (g * g)
    if centered:
        grad_avg = alpha * grad_avg + (1 - alpha) * g
        avg = xp.sqrt(v - grad_avg * grad_avg) + eps
    else:
        avg = xp.sqrt(v) + eps
    if momentum > 0:
        momentum_buffer = momentum * momentum_buffer + g / avg
        param = param - lr * momentum_buffer
    else:
        param = param - lr * (g / avg)
    return _skip(xp, found_inf, old, (param, v, momentum_buffer, grad_avg))


def adagrad_update(xp, param, grad, state_sum, *, step, lr, lr_decay=0.0, weight_decay=0.0,
                   eps=1e-10, inv_scale=None, found_inf=None, skipped=None):
    """Adagrad as ``torch.optim.Adagrad``.

    ``clr = lr / (1 + (t - 1) lr_decay)``, ``s += g^2``, ``p -= clr g / (sqrt(s) + eps)``.
    """
    grad = _unscaled(xp, grad, inv_scale)
    g = grad + weight_decay * param if weight_decay != 0 else grad
    t = _step_number(xp, step, skipped)
    clr = lr / (1 + (t - 1) * lr_decay)
    if not isinstance(clr, float):
        clr = _typed(xp, clr, param)
    s = state_sum + g * g
    return _skip(xp, found_inf, (param, state_sum), (param - clr * (g / (xp.sqrt(s) + eps)), s))


def adadelta_update(xp, param, grad, square_avg, acc_delta, *, lr=1.0, rho=0.9, eps=1e-6,
                    weight_decay=0.0, inv_scale=None, found_inf=None, skipped=None):
    """Adadelta as ``torch.optim.Adadelta``.

    ``v = rho v + (1 - rho) g^2``, ``d = sqrt(u + eps) / sqrt(v + eps) g``,
    ``u = rho u + (1 - rho) d^2``, ``p -= lr d``.
    """
    grad = _unscaled(xp, grad, inv_scale)
    g = grad + weight_decay * param if weight_decay != 0 else grad
    v = rho * square_avg + (1 - rho) * (g * g)
    delta = xp.sqrt(acc_delta + eps) / xp.sqrt(v + eps) * g
    u = rho * acc_delta + (1 - rho) * (delta * delta)
    return _skip(xp, found_inf, (param, square_avg, acc_delta), (param - lr * delta, v, u))

