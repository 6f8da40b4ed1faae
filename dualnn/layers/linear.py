"""Fully connected layer ``y = x W^T + b``."""

from __future__ import annotations

from .. import init as initializers
from ..errors import ConfigurationError
from .base import Layer


class Linear(Layer):
    r"""Affine map of a batch: :math:`y = x W^\top + b` (the notes' :math:`z = W a + b` per row).

    Parameters
    ----------
    in_features, out_features : int
        Sizes of each input row and output row.
    bias : bool
        Learn an additive bias (zero at start). A Linear that feeds a BatchNorm may leave
        it out: batch norm subtracts the batch mean, which cancels it.
    init : str or callable
        Weight initializer; see :mod:`dualnn.init`. Default ``"xavier"`` (Glorot uniform).
    dtype : {"float32", "float64"}

    Attributes
    ----------
    weight : Parameter, shape (out_features, in_features)
    bias : Parameter, shape (out_features,), or None
    """

    def __init__(self, in_features, out_features, bias=True, init="xavier", dtype="float32"):
        super().__init__(dtype=dtype)
        for label, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"Linear: {label} must be a positive int, got {value!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.init = init if isinstance(init, str) else getattr(init, "__name__", "custom")
        draw = initializers.get(init)
        host = draw((out_features, in_features), self.backend.host_rng)
        self.add_parameter("weight", self.backend.store(host, dtype))
        if bias:
            self.add_parameter("bias", self.backend.zeros((out_features,), dtype))
        else:
            self.bias = None
        self._x = None

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None, "init": self.init, "dtype": self.dtype}

    def forward(self, x, training=False):
        """``x``: (batch, in_features) -> (batch, out_features)."""
        return self.forward_fused(x, training)

    def forward_fused(self, x, training=False, activation="identity", alpha=0.0, out=None):
        """``act(x W^T + b)`` with the bias add and activation in one pass after the GEMM.

        :class:`~dualnn.layers.Sequential` calls this for a Linear followed by an
        activation whose derivative can be taken from its output; the activation layer
        then only runs its backward. ``out`` is an optional preallocated
        ``(batch, out_features)`` output.
        """
        self._check_input(x, self.in_features)
        self._x = x
        y = self.backend.matmul(x, self.weight.data.T, out=out)
        bias = None if self.bias is None else self.bias.data
        if bias is not None or activation != "identity":
            y = self.backend.bias_activation_forward(y, bias, activation, alpha, out=y)
        return y

    def backward(self, dy):
        r"""Adds :math:`dW = dy^\top x`, :math:`db = \sum_n dy`; returns :math:`dx = dy\,W`."""
        return self.backward_into(dy, out=None)

    def backward_into(self, dy, out=None):
        """:meth:`backward` writing ``dx`` into the preallocated ``out`` when given."""
        self.accumulate_parameter_gradients(dy)
        return self.backend.matmul(dy, self.weight.data, out=out)

    def accumulate_parameter_gradients(self, dy):
        """The parameter half of :meth:`backward`: adds ``dW`` and ``db``, no ``dx``."""
        x = self._x
        self._check_grad(dy, None if x is None else (x.shape[0], self.out_features))
        grad, overwrite = self.weight.gradient_buffer()
        self.backend.matmul_accumulate(dy.T, x, grad, overwrite)
        if self.bias is not None:
            self.bias.grad += self.xp.sum(dy, axis=0)

    def _clear_cache(self):
        self._x = None
