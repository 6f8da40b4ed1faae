"""Readable definitions of the activation ops, written once for any Array API namespace.

Each function takes the array namespace ``xp`` first and returns new arrays; it never
writes into its arguments. Only Array API standard calls are used, so this runs on NumPy,
CuPy and ``array_api_strict`` alike. The CPU (``cpu.py``) and CUDA (``cuda.py``) kernels
beside this module compute the same results; tests compare them with these twins.

Shapes: ``z``, ``y``, ``dy`` are ``(batch, features)`` (any shape without a bias); ``b`` is
``(features,)``.
"""

from __future__ import annotations

from ..ops import ACTIVATIONS, BACKWARD_FROM_OUTPUT, activation_code

__all__ = [
    "ACTIVATIONS",
    "BACKWARD_FROM_OUTPUT",
    "activation_backward",
    "activation_forward",
    "bias_activation_forward",
    "sigmoid",
]


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
    activation_code(kind)  # raises ValueError for an unknown kind
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
    activation_code(kind)  # raises ValueError for an unknown kind
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

