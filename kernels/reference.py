"""Readable definitions of every fused op, written once for any Array API namespace.

Each function takes the array namespace ``xp`` first and returns new arrays; it never
writes into its arguments. The Numba (``cpu.py``) and Numba-CUDA (``cuda.py``) kernels
compute the same results in fewer passes, writing into preallocated outputs; tests
compare them with these twins.

Shapes: ``x``, ``z``, ``y``, ``dy`` are ``(batch, features)``; per-feature vectors
(``b``, ``gamma``, ``beta``, ``mean``, ``invstd``, running statistics) are ``(features,)``.
Optimizer ops work on arrays of any shape (a parameter and its state, same shape).

Only Array API standard calls are used here, so this module runs on NumPy, CuPy and
``array_api_strict`` alike.
"""

from __future__ import annotations

import math

ACTIVATIONS = ("identity", "relu", "leaky_relu", "elu", "sigmoid", "tanh")
"""Activation kinds understood by the activation ops."""

BACKWARD_FROM_OUTPUT = ("sigmoid", "tanh", "identity")
"""Kinds whose derivative is computed from the activation's output; the rest use its input."""


def _check_kind(kind):
    if kind not in ACTIVATIONS:
        raise ValueError(f"unknown activation {kind!r}; expected one of {ACTIVATIONS}")


def sigmoid(xp, z):
    """Logistic function ``1 / (1 + exp(-z))`` that never overflows.

    ``exp`` is only ever taken of a non-positive number: for ``z >= 0`` it is
    ``1 / (1 + e^{-z})``, for ``z < 0`` it is ``e^{z} / (1 + e^{z})``.
    """
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))


def activation_forward(xp, kind, z, alpha=0.0):
    """Apply the activation ``kind`` elementwise.

    Parameters
    ----------
    xp : namespace
        Array API namespace.
    kind : str
        One of :data:`ACTIVATIONS`.
    z : array, any shape
        Pre-activation.
    alpha : float
        Negative slope of ``leaky_relu``; scale of ``elu``.

    Returns
    -------
    array, shape of ``z``
    """
    _check_kind(kind)
    if kind == "identity":
        return z
    if kind == "relu":
        return xp.where(z < 0, xp.zeros_like(z), z)  # NaN passes through, as torch.relu
    if kind == "leaky_relu":
        return xp.where(z > 0, z, alpha * z)
    if kind == "elu":
        # expm1 of min(z, 0) so the discarded branch never overflows.
        neg = alpha * xp.expm1(xp.minimum(z, xp.zeros_like(z)))
        return xp.where(z > 0, z, neg)
    if kind == "sigmoid":
        return sigmoid(xp, z)
    return xp.tanh(z)


def bias_activation_forward(xp, z, b, kind, alpha=0.0):
    """``act(z + b)``: the bias add and activation that follow a GEMM.

    Parameters
    ----------
    z : array, shape (batch, features)
        ``x @ W.T``.
    b : array, shape (features,) or None
        Bias, broadcast over rows; ``None`` skips the add.
    """
    if b is not None:
        z = z + b
    return activation_forward(xp, kind, z, alpha)


def activation_backward(xp, kind, dy, saved, alpha=0.0):
    """``dz = dy * f'(.)`` for the activation ``kind``.

    ``saved`` is the activation's input ``z`` for ``relu``, ``leaky_relu`` and ``elu``
    and its output ``y`` for ``sigmoid``, ``tanh`` and ``identity``
    (see :data:`BACKWARD_FROM_OUTPUT`). Derivatives at the kink follow PyTorch:
    ``relu'(0) = 0``, ``leaky_relu'(0) = alpha``, ``elu'(0) = alpha``.
    """
    _check_kind(kind)
    if kind == "identity":
        return dy
    if kind == "relu":
        return xp.where(saved > 0, dy, xp.zeros_like(dy))
    if kind == "leaky_relu":
        return xp.where(saved > 0, dy, alpha * dy)
    if kind == "elu":
        neg = alpha * xp.exp(xp.minimum(saved, xp.zeros_like(saved)))
        return xp.where(saved > 0, dy, dy * neg)
    if kind == "sigmoid":
        return dy * saved * (1 - saved)
    return dy * (1 - saved * saved)


def _relu_mask(xp, y, dy):
    return xp.where(y > 0, dy, xp.zeros_like(dy))


def batchnorm_forward_train(xp, x, gamma, beta, running_mean, running_var, eps, momentum,
                            relu=False):
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

    Returns
    -------
    y : array, shape (n, c)
    mean, invstd : array, shape (c,)
        Batch mean and ``1 / sqrt(var + eps)``, saved for the backward pass.
    new_running_mean, new_running_var : array, shape (c,)
    """
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


def batchnorm_backward(xp, dy, x, gamma, beta, mean, invstd, relu=False):
    """Gradients of training-mode batch normalization.

    With ``xhat = (x - mean) * invstd``::

        dgamma = sum_n dy * xhat
        dbeta  = sum_n dy
        dx     = gamma * invstd / n * (n * dy - dbeta - xhat * dgamma)

    With ``relu=True``, ``dy`` is the gradient of ``max(y, 0)`` and is first masked
    where ``y = gamma * xhat + beta <= 0`` (the mask is recomputed, not stored).

    Returns
    -------
    dx : array, shape (n, c)
    dgamma, dbeta : array, shape (c,)
    """
    n = x.shape[0]
    xhat = (x - mean) * invstd
    if relu:
        dy = _relu_mask(xp, xhat * gamma + beta, dy)
    dbeta = xp.sum(dy, axis=0)
    dgamma = xp.sum(dy * xhat, axis=0)
    dx = (gamma * invstd / n) * (n * dy - dbeta - xhat * dgamma)
    return dx, dgamma, dbeta


def softmax(xp, z):
    """Row-wise softmax, shifted by the row maximum so ``exp`` never overflows."""
    shifted = z - xp.max(z, axis=1, keepdims=True)
    e = xp.exp(shifted)
    return e / xp.sum(e, axis=1, keepdims=True)


def log_softmax(xp, z):
    """Row-wise ``log(softmax(z))`` through a stable log-sum-exp."""
    shifted = z - xp.max(z, axis=1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


def one_hot(xp, labels, classes, dtype):
    """``(n, classes)`` array with 1 at ``labels[i]`` in row ``i``."""
    hits = xp.reshape(labels, (-1, 1)) == xp.reshape(xp.arange(classes), (1, -1))
    return xp.astype(hits, dtype)


def softmax_cross_entropy(xp, logits, labels):
    """Mean softmax cross-entropy and its gradient with respect to the logits.

    Parameters
    ----------
    logits : array, shape (n, k)
    labels : integer array, shape (n,), values in [0, k)

    Returns
    -------
    loss : 0-d array
        ``-mean_i log softmax(logits)_{i, labels_i}``.
    dlogits : array, shape (n, k)
        ``(softmax(logits) - onehot(labels)) / n``.
    """
    n, k = logits.shape
    logp = log_softmax(xp, logits)
    target = one_hot(xp, labels, k, logits.dtype)
    # where, not a product: a -inf logit off the label must not turn into -inf * 0 = NaN.
    picked = xp.where(target > 0, logp, xp.zeros_like(logp))
    loss = -xp.sum(picked) / n
    dlogits = (xp.exp(logp) - target) / n
    return loss, dlogits


# ---------------------------------------------------------------------------------------
# Optimizer updates. Scalars are Python floats; ``step`` counts from 1 (this update).
# Each returns the new parameter followed by the new state, in argument order.
# ---------------------------------------------------------------------------------------

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
