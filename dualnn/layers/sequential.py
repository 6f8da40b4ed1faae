"""A stack of layers applied in order."""

from __future__ import annotations

from ..backend.base import FLOAT_DTYPES, dtype_name
from ..errors import ConfigurationError, DeviceMismatchError, NonFiniteInputError, ShapeError
from .base import Layer


class Sequential(Layer):
    """Layers applied one after the other; backward runs them in reverse.

    The model's entry checks the input once (a 2-D float array on the model's device,
    with the right number of features, finite on the CPU); the layers then only check
    shapes.

    Sequential knows no concrete layer class; it runs *steps* through the optional
    protocol of :class:`Layer`. Each layer is asked :meth:`Layer.fuse_next` about the
    layer after it; a returned :class:`~dualnn.layers.fusion.FusedBlock` runs both as one
    step (for instance batch norm applies a following rectifier inside its own passes, and
    a fully connected layer applies its bias and a following activation in one pass after
    its GEMM; see each layer's ``fuse_next``). Both
    layers stay in the model with their names and parameters. Steps that declare
    ``"out"`` in ``forward_options`` write inner outputs into scratch buffers the model
    owns and reuses; in backward, steps declaring ``"overwrite"`` work in place on
    gradients the model produced itself (the caller's ``dy`` is never overwritten),
    ``"out"`` receives a reused buffer for ``dL/dx``, and the first step is told to skip
    ``dL/dx`` with ``"input_grad"`` when the caller does not want it.

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
        self._input_shapes = None

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
    def plan(self):
        """The execution steps: ``(index, step)`` pairs, where ``step`` is the layer at
        ``index`` or a :class:`~dualnn.layers.fusion.FusedBlock` starting there."""
        if self._plan is None:
            plan, i, layers = [], 0, self._layers
            while i < len(layers):
                step = layers[i]
                if self.fuse and i + 1 < len(layers):
                    step = self._fused(i) or step
                plan.append((i, step))
                i += len(step.layers) if step is not layers[i] else 1
            self._plan = plan
        return self._plan

    def _fused(self, i):
        """Layer i's fused block with layer i + 1, checked to cover exactly those two."""
        first, second = self._layers[i], self._layers[i + 1]
        block = first.fuse_next(second)
        if block is not None and (len(block.layers) != 2 or block.layers[0] is not first
                                  or block.layers[1] is not second):
            raise ConfigurationError(
                f"{self.name}: layer {i} ({first.name}).fuse_next returned a block over "
                f"{[layer.name for layer in block.layers]}, expected exactly layers {i} and "
                f"{i + 1} ({first.name}, {second.name})")
        return block

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
            raise NonFiniteInputError(f"{self.name}: the input contains NaN or infinite values")

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
        self._input_shapes = None

    forward_options = frozenset({"out"})

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for _, step in self.plan():
            shape = tuple(step.output_shape(shape))
        return shape

    def output_buffer(self, x):
        """A buffer for the output of ``forward(x)`` reused across calls, or None.

        For a training loop that consumes each output within its step (``fit`` on a GPU
        passes it as ``out=``): None when the last step cannot write into one, or the
        backend prefers fresh arrays.
        """
        steps = self.plan()
        if not steps or "out" not in steps[-1][1].forward_options:
            return None
        return self._buffer(("output",), self.output_shape(x.shape), x.dtype)

    def forward(self, x, training=False, out=None):
        """Run every layer on ``x``: (batch, features) -> the last layer's output.

        ``out`` (optional) receives the last step's output when that step can write
        into a given array (see :meth:`output_buffer`); otherwise it is fresh.
        """
        self.check_input(x)
        steps = self.plan()
        last = len(steps) - 1
        shapes = self._input_shapes = []
        for position, (i, step) in enumerate(steps):
            shapes.append(x.shape)
            if "out" in step.forward_options and (position < last or out is not None):
                buf = out if position == last else self._buffer(
                    ("forward", i), step.output_shape(x.shape), x.dtype)
                x = step.forward(x, training, out=buf)
            else:
                x = step.forward(x, training)
        return x

    def backward(self, dy, input_grad=True):
        """Backpropagate ``dL/dy`` through every layer; returns ``dL/dx``.

        Parameters
        ----------
        dy : array, shape of the last forward's output
            Never modified.
        input_grad : bool
            Compute and return ``dL/dx`` of the model's input (default). ``False`` lets
            the first step skip its input gradient (for a fully connected layer, the
            input-gradient GEMM), as frameworks do for data that needs no gradient, and
            returns ``None``; ``fit`` uses it.
        """
        original = dy  # the caller's array is never overwritten
        steps = self.plan()
        for position in range(len(steps) - 1, -1, -1):
            i, step = steps[position]
            options = step.backward_options
            kwargs = {}
            if dy is not original and "overwrite" in options:
                kwargs["overwrite"] = True
            if position == 0:
                if not input_grad:
                    if "input_grad" in options:
                        kwargs["input_grad"] = False
                    step.backward(dy, **kwargs)
                    return None
            elif "out" in options and self._input_shapes is not None:
                kwargs["out"] = self._buffer(("backward", i), self._input_shapes[position],
                                             dy.dtype)
            dy = step.backward(dy, **kwargs)
        return dy

    backward_options = frozenset({"input_grad"})
