"""Fully connected layer ``y = x W^T + b``."""

from __future__ import annotations

from .. import init as initializers
from ..backend.base import dtype_name
from ..errors import ConfigurationError, ShapeError
from .base import Layer
from .fusion import FusedBlock


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

    forward_options = frozenset({"out"})
    backward_options = frozenset({"out", "input_grad"})

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

    def output_shape(self, input_shape):
        return (input_shape[0], self.out_features)

    def forward(self, x, training=False, out=None):
        """``x``: (batch, in_features) -> (batch, out_features).

        ``out`` is an optional preallocated ``(batch, out_features)`` output.
        """
        return self._forward(x, "identity", 0.0, out)

    def _forward(self, x, activation, alpha, out):
        """``act(x W^T + b)`` with the bias add and activation in one pass after the GEMM."""
        weight16 = self._half_weight(x)
        if weight16 is not None:
            y = self._forward_half(x, weight16, out)
        else:
            self._check_input(x, self.in_features)
            self._x = x
            y = self.backend.matmul(x, self.weight.data.T, out=out)
        bias = None if self.bias is None else self.bias.data
        if bias is not None or activation != "identity":
            y = self.backend.bias_activation_forward(y, bias, activation, alpha, out=y)
        return y

    def backward(self, dy, *, out=None, input_grad=True):
        r"""Adds :math:`dW = dy^\top x`, :math:`db = \sum_n dy`; returns :math:`dx = dy\,W`.

        ``out`` is an optional preallocated ``(batch, in_features)`` array for ``dx``;
        with ``input_grad=False`` only ``dW`` and ``db`` are computed and ``None`` is
        returned.
        """
        x = self._x
        self._check_grad(dy, None if x is None else (x.shape[0], self.out_features),
                         None if x is None else x.dtype)
        weight16 = self._half_weight(x)
        if weight16 is not None:
            return self._backward_half(dy, x, weight16, out, input_grad)
        grad, overwrite = self.weight.gradient_buffer()
        self.backend.matmul_accumulate(dy.T, x, grad, overwrite)
        if self.bias is not None:
            self.backend.sum_rows_into(dy, *self.bias.gradient_buffer())
        if not input_grad:
            return None
        return self.backend.matmul(dy, self.weight.data, out=out)

    def fuse_next(self, next_layer):
        """Fuse with a following activation whose derivative can be read from its output
        (it offers ``output_activation()``): bias and activation then run in one pass
        right after the GEMM."""
        offer = getattr(next_layer, "output_activation", None)
        spec = offer() if offer is not None else None
        return None if spec is None else LinearActivation(self, next_layer, *spec)

    def _clear_cache(self):
        self._x = None
        self._weight16 = None

    # ------------------------------------------------------------------ 16-bit storage
    # Mixed precision with real 16-bit activations (a backend with ``half_storage``):
    # the runner refreshes a 16-bit copy of the float32 master weight once per optimizer
    # step; a 16-bit input then takes these branches, whose GEMMs compute in float32.
    _weight16 = None

    def refresh_weight16(self, dtype):
        """Round the float32 master weight into its cached 16-bit copy (``"float16"`` or
        ``"bfloat16"``); returns the copy, shape (out_features, in_features)."""
        b = self.backend
        cached = self._weight16
        if cached is None or dtype_name(cached.dtype) != b.storage_dtype(dtype):
            cached = None
        self._weight16 = b.cast_storage(self.weight.data, dtype, out=cached)
        return self._weight16

    def _half_weight(self, x):
        """The 16-bit weight copy when ``x`` is stored like it, else None."""
        w = self._weight16
        return w if w is not None and x is not None and x.dtype == w.dtype else None

    def _forward_half(self, x, weight16, out):
        self._check_batch(x)
        if x.shape[1] != self.in_features:
            raise ShapeError(f"{self.name}: expected {self.in_features} input features, "
                             f"got shape {tuple(x.shape)}")
        self._x = x
        b = self.backend
        if out is None:
            out = b.empty((x.shape[0], self.out_features), dtype_name(x.dtype))
        return b.matmul_mixed(x, weight16, out, transpose_b=True)

    def _backward_half(self, dy, x, weight16, out, input_grad):
        """dW (float32, added into the master gradient) = dy^T x; db summed in float32;
        dx = dy W16 in 16 bits."""
        b = self.backend
        grad, overwrite = self.weight.gradient_buffer()
        b.matmul_mixed(dy, x, grad, transpose_a=True, accumulate=not overwrite)
        if self.bias is not None:
            b.sum_rows_mixed(dy, *self.bias.gradient_buffer())
        if not input_grad:
            return None
        if out is None:
            out = b.empty(tuple(x.shape), dtype_name(x.dtype))
        return b.matmul_mixed(dy, weight16, out)


class LinearActivation(FusedBlock):
    """A :class:`Linear` and the activation after it: ``act(x W^T + b)`` in one pass.

    The activation computes nothing in forward; it is handed the output (its derivative
    is taken from the output) and runs its own backward as usual.
    """

    forward_options = frozenset({"out"})
    backward_options = frozenset({"out", "overwrite", "input_grad"})

    def __init__(self, linear, act, kind, alpha):
        super().__init__(linear, act)
        self.kind, self.alpha = kind, alpha

    def forward(self, x, training=False, out=None):
        linear, act = self.layers
        return act.adopt_output(linear._forward(x, self.kind, self.alpha, out))

    def backward(self, dy, *, out=None, overwrite=False, input_grad=True):
        linear, act = self.layers
        dy = act.backward(dy, overwrite=overwrite)
        return linear.backward(dy, out=out, input_grad=input_grad)
