"""Mixed precision with real 16-bit arrays between layers (a backend with ``half_storage``).

On the GPU backend, ``fit(..., precision="mixed_float16" | "mixed_bfloat16")`` runs
:class:`HalfStorageRunner` instead of rounding float32 arrays: the input batch is
converted once into a reused 16-bit buffer, every step of the model's plan reads and
writes 16-bit arrays (float16, or bfloat16 as uint16 bit patterns), and every gradient
passed back between steps is 16-bit. Only these stay float32: the master parameters,
their gradients and the optimizer state, batch norm's statistics and gamma/beta, the
model's output handed to the loss (widened into a reused float32 buffer, as autocast
runs losses in float32) and the loss gradient before it is scaled and stored in 16 bits.

Each step runs in one of two modes, chosen once per model:

``half``
    The step's kernels take 16-bit storage and compute in float32: :class:`Linear`
    (``backend.matmul_mixed``, cuBLAS ``GemmEx`` with float32 compute, against a 16-bit
    copy of its weight refreshed once per optimizer step), a Linear fused with its
    activation, the elementwise activations, and batch norm where the backend's
    kernels take the dtype (``backend.takes_half("batchnorm", dtype)``).
``wide``
    Any other step (dropout, softmax, custom layers; batch norm in bfloat16 until its
    kernels take bfloat16; ghost or synchronized batch norm): its 16-bit input is
    widened into a reused float32 buffer, the step runs in float32, and its output (and
    in backward its input gradient) is rounded back into a 16-bit buffer. The values
    stored between steps are the same 16-bit values as in ``half`` mode.

The 16-bit weight copies are refreshed in the first forward after the gradients were
zeroed, which ``fit`` does after every optimizer step: once per step, not per
micro-batch.
"""

from __future__ import annotations

from ..backend.base import dtype_name
from ..layers import BatchNorm, Linear, Sequential
from ..layers.activations import _Elementwise
from ..layers.batchnorm import BatchNormReLU
from ..layers.fusion import FusedBlock
from ..layers.linear import LinearActivation

HALF, WIDE = "half", "wide"


class HalfStorageRunner:
    """Forward and backward of ``model`` with 16-bit arrays between its steps.

    Same interface as :class:`~dualnn.training.mixed_precision.PrecisionRunner`
    (which returns one of these on a backend with ``half_storage``).

    Parameters
    ----------
    model : Layer
    policy : Precision

    Attributes
    ----------
    dtype : {"float16", "bfloat16"}
    storage : {"float16", "uint16"}
        Array dtype of the activations and gradients between steps.
    modes : list of str
        ``"half"`` or ``"wide"`` per step of the plan (see the module notes).
    trace : list or None
        When a list, each forward appends ``(step index, input dtype, output dtype)``
        of every step (tests read it).
    """

    def __init__(self, model, policy):
        self.model = model
        self.backend = backend = model.backend
        self.dtype = policy.compute_dtype
        self.storage = backend.storage_dtype(self.dtype)
        self.sequential = isinstance(model, Sequential)
        self.steps = list(model.plan()) if self.sequential else [(0, model)]
        self.modes = [self._mode(step) for _, step in self.steps]
        self.linears = []
        for (_, step), mode in zip(self.steps, self.modes):
            if mode != HALF:
                continue
            for layer in _layers_of(step):
                if isinstance(layer, Linear):
                    self.linears.append(layer)
                elif layer.dtype is not None:
                    layer.half_input = self.storage  # its kernels take this storage
        self._buffers = {}
        self._shapes = [None] * len(self.steps)
        self._fresh = False
        self.trace = None

    # ------------------------------------------------------------------ set-up
    def _mode(self, step):
        backend, dtype = self.backend, self.dtype
        if isinstance(step, (Linear, LinearActivation)):
            kind = getattr(step, "kind", None)
            if kind is None or backend.takes_half("activation", dtype):
                return HALF
            return WIDE
        if isinstance(step, _Elementwise):
            plain = (type(step).forward is _Elementwise.forward
                     and type(step).backward is _Elementwise.backward)
            if plain and step.kind != "identity" and backend.takes_half("activation", dtype):
                return HALF
            return WIDE
        if isinstance(step, (BatchNorm, BatchNormReLU)):
            bn = step if isinstance(step, BatchNorm) else step.layers[0]
            if (bn.ghost_batch_size is None and not bn.sync
                    and backend.takes_half("batchnorm", dtype)):
                return HALF
        return WIDE

    def _buffer(self, key, shape, dtype):
        """A buffer reused from step to step (by key, shape and dtype)."""
        key = (key, tuple(shape), dtype)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = self.backend.empty(tuple(shape), dtype)
        return buf

    def refresh_weights(self):
        """Round every Linear's float32 master weight into its 16-bit copy."""
        for linear in self.linears:
            linear.refresh_weight16(self.dtype)
        self._fresh = True

    def _weights_changed(self):
        # fit zeroes the gradients after every optimizer step; the first forward after
        # that is the first of a new step (later micro-batches find them in use)
        return not self._fresh or any(getattr(linear.weight, "_grad_stale", True)
                                      for linear in self.linears)

    # ------------------------------------------------------------------ passes
    def forward(self, x):
        """Training forward of ``x`` (batch, features), float32 -> the model's output,
        widened to float32 into a reused buffer (consumed by the loss within the step)."""
        backend = self.backend
        if self.sequential:
            self.model.check_input(x)
            self.model._input_shapes = None  # its buffers are not used on this path
        if self._weights_changed():
            self.refresh_weights()
        h = backend.cast_storage(x, self.dtype,
                                 out=self._buffer("input", x.shape, self.storage))
        for position, (index, step) in enumerate(self.steps):
            self._shapes[position] = tuple(h.shape)
            y = self._forward_step(position, index, step, h)
            if self.trace is not None:
                self.trace.append((index, dtype_name(h.dtype), dtype_name(y.dtype)))
            h = y
        return backend.cast_storage(h, "float32",
                                    out=self._buffer("output", h.shape, "float32"))

    def _forward_step(self, position, index, step, h):
        backend = self.backend
        takes_out = "out" in step.forward_options
        if self.modes[position] == HALF:
            if not takes_out:
                return step.forward(h, True)
            out = self._buffer(("forward", index), step.output_shape(h.shape), self.storage)
            return step.forward(h, True, out=out)
        wide = backend.cast_storage(h, "float32",
                                    out=self._buffer(("wide_in", index), h.shape, "float32"))
        if takes_out:
            y = step.forward(wide, True, out=self._buffer(
                ("wide_out", index), step.output_shape(h.shape), "float32"))
        else:
            y = step.forward(wide, True)
        return backend.cast_storage(
            y, self.dtype, out=self._buffer(("forward", index), y.shape, self.storage))

    def backward(self, dy):
        """Backward of ``dy`` (the float32 loss gradient, already scaled): stored in 16
        bits, then passed back step by step; no input gradient."""
        backend = self.backend
        dy = backend.cast_storage(dy, self.dtype,
                                  out=self._buffer("dy", dy.shape, self.storage))
        for position in range(len(self.steps) - 1, -1, -1):
            index, step = self.steps[position]
            options = step.backward_options
            first = position == 0
            half = self.modes[position] == HALF
            if not half:
                dy = backend.cast_storage(
                    dy, "float32", out=self._buffer(("wide_dy", index), dy.shape, "float32"))
            kwargs = {"overwrite": True} if "overwrite" in options else {}
            if first and "input_grad" in options:
                kwargs["input_grad"] = False
            elif not first and "out" in options:
                kwargs["out"] = self._buffer(("backward" if half else "wide_dx", index),
                                             self._shapes[position],
                                             self.storage if half else "float32")
            dx = step.backward(dy, **kwargs)
            if first:
                return
            dy = dx if half else backend.cast_storage(
                dx, self.dtype,
                out=self._buffer(("backward", index), dx.shape, self.storage))


def _layers_of(step):
    return list(step.layers) if isinstance(step, FusedBlock) else [step]


__all__ = ["HalfStorageRunner"]
