"""Readable definitions of the optimizer-update ops, written once for any Array API namespace.

Each function takes the array namespace ``xp`` first and returns new arrays; it never
writes into its arguments. Only Array API standard calls are used, so this runs on NumPy,
CuPy and ``array_api_strict`` alike. The CPU (``cpu.py``) and CUDA (``cuda.py``) kernels
beside this module compute the same results; tests compare them with these twins.

Scalars are Python floats; ``step`` counts from 1 (this update). Each function returns the
new parameter followed by the new state, in argument order. Arrays have any shape (a
parameter and its state, same shape).
"""

from __future__ import annotations

import math


def sgd_update(xp, param, grad, momentum_buffer, *, lr, momentum=0.0, dampening=0.0,
               nesterov=False, weight_decay=0.0, first_step=False):
    """SGD with momentum, Nesterov and L2 weight decay, as ``torch.optim.SGD``.

    ``g = grad + wd * p``; ``buf = g`` on the first step, else
    ``momentum * buf + (1 - dampening) * g``; the step direction is ``g + momentum * buf``
    (Nesterov) or ``buf``; ``p -= lr * direction``. With ``momentum == 0`` the buffer is
    returned unchanged and may be ``None``.
    """
    g = grad + weight_decay * param if weight_decay != 0 else grad
    if momentum != 0:
        buf = g if first_step else momentum * momentum_buffer + (1 - dampening) * g
        direction = g + momentum * buf if nesterov else buf
    else:
        buf = momentum_buffer
        direction = g
    return param - lr * direction, buf


def adam_update(xp, param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1=0.9, beta2=0.999,
                eps=1e-8, weight_decay=0.0, decoupled=False):
    """Adam (``decoupled=False``, L2 added to the gradient) or AdamW, as ``torch.optim``.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``; AdamW first
    scales ``p *= 1 - lr * wd``.
    """
    if weight_decay != 0:
        if decoupled:
            param = param * (1 - lr * weight_decay)
        else:
            grad = grad + weight_decay * param
    m = beta1 * exp_avg + (1 - beta1) * grad
    v = beta2 * exp_avg_sq + (1 - beta2) * (grad * grad)
    step_size = lr / (1 - beta1**step)
    bias_correction2_sqrt = math.sqrt(1 - beta2**step)
    denom = xp.sqrt(v) / bias_correction2_sqrt + eps
    return param - step_size * (m / denom), m, v


def rmsprop_update(xp, param, grad, square_avg, momentum_buffer, grad_avg, *, lr, alpha=0.99,
                   eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
    """RMSprop as ``torch.optim.RMSprop`` (optional momentum and centering).

    ``v = alpha v + (1 - alpha) g^2``; centered: ``ga = alpha ga + (1 - alpha) g`` and
    ``avg = sqrt(v - ga^2) + eps``, else ``avg = sqrt(v) + eps``; with momentum
    ``buf = momentum buf + g / avg`` and ``p -= lr buf``, else ``p -= lr g / avg``.
    ``momentum_buffer`` and ``grad_avg`` may be ``None`` when unused.
    """
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
    return param, v, momentum_buffer, grad_avg


def adagrad_update(xp, param, grad, state_sum, *, step, lr, lr_decay=0.0, weight_decay=0.0,
                   eps=1e-10):
    """Adagrad as ``torch.optim.Adagrad``.

    ``clr = lr / (1 + (t - 1) lr_decay)``, ``s += g^2``, ``p -= clr g / (sqrt(s) + eps)``.
    """
    g = grad + weight_decay * param if weight_decay != 0 else grad
    clr = lr / (1 + (step - 1) * lr_decay)
    s = state_sum + g * g
    return param - clr * (g / (xp.sqrt(s) + eps)), s


def adadelta_update(xp, param, grad, square_avg, acc_delta, *, lr=1.0, rho=0.9, eps=1e-6,
                    weight_decay=0.0):
    """Adadelta as ``torch.optim.Adadelta``.

    ``v = rho v + (1 - rho) g^2``, ``d = sqrt(u + eps) / sqrt(v + eps) g``,
    ``u = rho u + (1 - rho) d^2``, ``p -= lr d``.
    """
    g = grad + weight_decay * param if weight_decay != 0 else grad
    v = rho * square_avg + (1 - rho) * (g * g)
    delta = xp.sqrt(acc_delta + eps) / xp.sqrt(v + eps) * g
    u = rho * acc_delta + (1 - rho) * (delta * delta)
    return param - lr * delta, v, u

