"""Elementwise activations and softmax.

Each layer's backward multiplies the incoming gradient by the derivative in one fused
pass (``backend.activation_backward``). Derivatives at the kink follow PyTorch:
``ReLU'(0) = 0``, ``LeakyReLU'(0) = alpha``, ``ELU'(0) = alpha``.
"""

from __future__ import annotations

from ..errors import ConfigurationError, DualnnError
from .base import Layer


class _Elementwise(Layer):
    """An activation computed by the backend's activation ops."""

    kind = "identity"
    saves_output = False
    backward_options = frozenset({"overwrite"})

    def __init__(self):
        super().__init__()
        self.alpha = 0.0
        self._saved = None

    def forward(self, x, training=False):
        self._check_input(x)
        y = self.backend.activation_forward(self.kind, x, self.alpha)
        self._saved = y if self.saves_output else x
        return y

    def output_activation(self):
        """``(kind, alpha)`` when a preceding layer may compute this activation itself.

        That is the case when the derivative can be taken from the output (``y > 0``
        exactly where ``x > 0``) and the subclass keeps this class's forward and
        backward; ``None`` otherwise. See :meth:`adopt_output`.
        """
        cls = type(self)
        if cls.forward is not _Elementwise.forward or cls.backward is not _Elementwise.backward:
            return None
        if self.kind in ("relu", "sigmoid", "tanh") or (
                self.kind == "leaky_relu" and self.alpha > 0):
            return (self.kind, self.alpha)
        return None

    def adopt_output(self, y):
        """Record ``y``, computed by a fused preceding layer, as this layer's forward
        output; returns ``y``."""
        self._saved = y
        return y

    def backward(self, dy, *, overwrite=False):
        """``dy * act'``; with ``overwrite`` the result is written into ``dy``."""
        self._check_grad(dy, self._saved)
        return self.backend.activation_backward(self.kind, dy, self._saved, self.alpha,
                                                out=dy if overwrite else None)

    def _clear_cache(self):
        self._saved = None


class Identity(_Elementwise):
    """``y = x``."""

    kind = "identity"
    saves_output = True

    def forward(self, x, training=False):
        self._check_input(x)
        self._saved = x
        return x

    def backward(self, dy, *, overwrite=False):
        self._check_grad(dy, self._saved)
        return dy


class ReLU(_Elementwise):
    """``y = max(x, 0)``; derivative 1 where ``x > 0``, else 0 (0 at ``x = 0``)."""

    kind = "relu"


class LeakyReLU(_Elementwise):
    """``y = x`` where ``x > 0``, else ``alpha x``; derivative ``alpha`` at 0.

    Parameters
    ----------
    alpha : float
        Slope for negative inputs (PyTorch's ``negative_slope``), default 0.01.
    """

    kind = "leaky_relu"

    def __init__(self, alpha=0.01):
        super().__init__()
        self.alpha = float(alpha)

    def get_config(self):
        return {"alpha": self.alpha}


class ELU(_Elementwise):
    """``y = x`` where ``x > 0``, else ``alpha (e^x - 1)``; derivative ``alpha`` at 0.

    Parameters
    ----------
    alpha : float
        Saturation value for large negative inputs, default 1.0.
    """

    kind = "elu"

    def __init__(self, alpha=1.0):
        super().__init__()
        self.alpha = float(alpha)

    def get_config(self):
        return {"alpha": self.alpha}


class Sigmoid(_Elementwise):
    """``y = 1 / (1 + e^{-x})`` computed without overflow; ``y' = y (1 - y)``."""

    kind = "sigmoid"
    saves_output = True


class Tanh(_Elementwise):
    """``y = tanh(x)``; ``y' = 1 - y^2``."""

    kind = "tanh"
    saves_output = True


class Step(Layer):
    """Hard threshold of the classic perceptron notes: 1 where ``x >= 0``, else 0.

    Inference only: its derivative is zero almost everywhere, so ``backward`` raises.
    """

    def forward(self, x, training=False):
        self._check_input(x)
        return self.xp.astype(x >= 0, x.dtype)

    def backward(self, dy):
        raise DualnnError(
            "Step has no useful gradient (zero almost everywhere); use it for inference, "
            "and train with Sigmoid or ReLU instead")


class Softmax(Layer):
    r"""Row-wise softmax :math:`y_{ij} = e^{x_{ij}} / \sum_k e^{x_{ik}}`, stable.

    For training a classifier prefer ``SoftmaxCrossEntropy`` on the logits: it fuses the
    two and its gradient is simply ``(y - onehot) / n``.
    """

    def __init__(self):
        super().__init__()
        self._y = None

    def forward(self, x, training=False):
        self._check_input(x)
        shifted = x - self.xp.max(x, axis=1, keepdims=True)
        e = self.xp.exp(shifted)
        self._y = e / self.xp.sum(e, axis=1, keepdims=True)
        return self._y

    def backward(self, dy):
        r""":math:`dx = y \odot (dy - \sum_j dy_j y_j)` row by row."""
        self._check_grad(dy, self._y)
        y = self._y
        return y * (dy - self.xp.sum(dy * y, axis=1, keepdims=True))

    def _clear_cache(self):
        self._y = None


ACTIVATION_LAYERS = {
    "identity": Identity,
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "leakyrelu": LeakyReLU,
    "elu": ELU,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "step": Step,
    "softmax": Softmax,
}


def activation(name, **kwargs):
    """An activation layer by name (``"relu"``, ``"tanh"``, ``"leaky_relu"``...)."""
    try:
        cls = ACTIVATION_LAYERS[str(name).lower()]
    except KeyError:
        raise ConfigurationError(
            f"unknown activation {name!r}; expected one of {sorted(ACTIVATION_LAYERS)}") from None
    return cls(**kwargs)


__all__ = ["Identity", "Step", "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "ELU", "Softmax",
           "activation"]
