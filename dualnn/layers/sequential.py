"""A stack of layers applied in order."""

from __future__ import annotations

from ..backend.base import FLOAT_DTYPES, dtype_name
from ..errors import ConfigurationError, DeviceMismatchError, ShapeError
from .activations import LeakyReLU, ReLU, Sigmoid, Tanh
from .base import Layer
from .batchnorm import BatchNorm
from .linear import Linear


class Sequential(Layer):
    """Layers applied one after the other; backward runs them in reverse.

    The model's entry checks the input once (a 2-D float array on the model's device,
    with the right number of features, finite on the CPU); the layers then only check
    shapes. A :class:`BatchNorm` directly followed by a :class:`ReLU` runs as one fused
    block (the ReLU is applied inside batch norm's passes); both layers stay in the model
    with their names and parameters. Likewise a :class:`Linear` followed by ReLU, LeakyReLU,
    Sigmoid or Tanh applies bias and activation in one pass right after its GEMM.

    Parameters
    ----------
    *layers : Layer
        The layers, first to last. Their parameters are named ``"<index>.<name>"``.
    fuse : bool
        Allow fused blocks (default True); ``False`` runs every layer on its own.
    """

    def __init__(self, *layers, fuse=True):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for index, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ConfigurationError(
                    f"Sequential: item {index} is a {type(layer).__name__}, not a dualnn Layer")
        dtypes = {layer.dtype for layer in layers if layer.dtype is not None}
        if len(dtypes) > 1:
            raise ConfigurationError(f"Sequential: layers mix dtypes {sorted(dtypes)}")
        super().__init__(dtype=dtypes.pop() if dtypes else None)
        self._layers = list(layers)
        backends = {id(layer.backend) for layer in layers}
        if len(backends) > 1:
            raise DeviceMismatchError(
                "Sequential: layers live on different devices: "
                + ", ".join(f"{i}:{layer.backend.device}" for i, layer in enumerate(layers)))
        if layers:
            self.backend = layers[0].backend
        self.fuse = bool(fuse)
        for name, param in self.named_parameters():
            param.name = name
        self._plan = None
        self._scratch = {}

    def children(self):
        return list(self._layers)

    def __len__(self):
        return len(self._layers)

    def __getitem__(self, index):
        return self._layers[index]

    def __iter__(self):
        return iter(self._layers)

    def get_config(self):
        return {"fuse": self.fuse}

    # ------------------------------------------------------------------ execution plan
    def _steps(self):
        """``(kind, index)`` pairs: ``("bn_relu", i)`` covers layers i and i + 1."""
        if self._plan is None:
            plan, i, layers = [], 0, self._layers
            while i < len(layers):
                nxt = layers[i + 1] if i + 1 < len(layers) else None
                if self.fuse and type(layers[i]) is BatchNorm and type(nxt) is ReLU:
                    plan.append(("bn_relu", i))
                elif (self.fuse and type(layers[i]) is Linear
                      and type(nxt) in (ReLU, LeakyReLU, Sigmoid, Tanh)
                      and nxt.fusable_after_linear()):
                    plan.append(("linear_act", i))
                else:
                    plan.append(("layer", i))
                i += 1 if plan[-1][0] == "layer" else 2
            self._plan = plan
        return self._plan

    def check_input(self, x):
        """The model's entry check: device, rank, float dtype, features, finiteness (CPU)."""
        b = self.backend
        self._check_batch(x)
        kind = dtype_name(x.dtype)
        if kind not in FLOAT_DTYPES:
            raise ShapeError(
                f"{self.name}: expected a floating-point input ({self.dtype or 'float32'}), "
                f"got {kind}; convert it, e.g. x.astype('{self.dtype or 'float32'}')")
        if self.dtype is not None and kind != self.dtype:
            raise ShapeError(
                f"{self.name}: expected {self.dtype} input (the model's dtype), got {kind}")
        first = next((layer for layer in self._layers if hasattr(layer, "in_features")), None)
        if first is not None and first is self._layers[0] and x.shape[1] != first.in_features:
            raise ShapeError(
                f"{self.name}: layer 0 ({first.name}) expected {first.in_features} input "
                f"features, got shape {tuple(x.shape)}")
        if b.device == "cpu" and not b.all_finite(x):
            raise ShapeError(f"{self.name}: the input contains NaN or infinite values")

    def _buffer(self, key, shape, dtype):
        """A per-model scratch array reused across steps (``None`` where the backend
        prefers fresh arrays). Only arrays that never leave the model are reused: the
        model's output and ``dL/dx`` are always fresh."""
        if not getattr(self.backend, "reuses_buffers", False):
            return None
        key = key + (tuple(shape), dtype_name(dtype))
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = self.backend.empty(tuple(shape), dtype_name(dtype))
        return buf

    def _clear_cache(self):
        self._scratch = {}

    def forward(self, x, training=False):
        """Run every layer on ``x``: (batch, features) -> the last layer's output."""
        self.check_input(x)
        steps = self._steps()
        for position, (kind, i) in enumerate(steps):
            layer = self._layers[i]
            inner = position < len(steps) - 1
            if kind == "bn_relu":
                out = self._buffer(("forward", i), x.shape, x.dtype) if inner else None
                x = layer.forward_fused(x, training, relu=True, out=out)
            elif kind == "linear_act" or type(layer) is Linear:
                shape = (x.shape[0], layer.out_features)
                out = self._buffer(("forward", i), shape, x.dtype) if inner else None
                if kind == "linear_act":
                    act = self._layers[i + 1]
                    x = act.adopt_output(layer.forward_fused(x, training, act.kind, act.alpha,
                                                             out=out))
                else:
                    x = layer.forward_fused(x, training, out=out)
            elif type(layer) is BatchNorm:
                out = self._buffer(("forward", i), x.shape, x.dtype) if inner else None
                x = layer.forward_fused(x, training, out=out)
            else:
                x = layer.forward(x, training)
        return x

    def backward(self, dy, input_grad=True):
        """Backpropagate ``dL/dy`` through every layer; returns ``dL/dx``.

        Parameters
        ----------
        dy : array, shape of the last forward's output
            Never modified.
        input_grad : bool
            Compute and return ``dL/dx`` of the model's input (default). ``False`` skips
            the first layer's input-gradient GEMM, as frameworks do for data that needs no
            gradient, and returns ``None``; ``fit`` uses it.
        """
        original = dy  # the caller's array is never overwritten
        steps = self._steps()
        for position in range(len(steps) - 1, -1, -1):
            kind, i = steps[position]
            # A fused Linear -> activation block runs the activation's backward, then the
            # Linear's; a fused BatchNorm -> ReLU block is one backward of the BatchNorm.
            chain = (i + 1, i) if kind == "linear_act" else (i,)
            for j in chain:
                layer = self._layers[j]
                if type(layer) is Linear:
                    if position == 0 and not input_grad and j == i:
                        layer.accumulate_parameter_gradients(dy)
                        return None
                    shape = (dy.shape[0], layer.in_features)
                    out = self._buffer(("backward", j), shape, dy.dtype) if position else None
                    dy = layer.backward_into(dy, out=out)
                elif dy is original:
                    dy = layer.backward(dy)
                else:
                    dy = layer.backward_overwrite(dy)
        return dy
