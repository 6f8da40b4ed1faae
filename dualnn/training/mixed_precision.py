"""Mixed precision inside :func:`dualnn.fit`: 16-bit activations and gradients.

``fit(..., precision="mixed_float16" | "mixed_bfloat16")`` keeps the master parameters,
their gradients, the optimizer state and batch norm's statistics and gamma/beta in
float32, and stores every activation passed between layers (the input batch included)
and every gradient passed back between layers (the loss gradient included) in 16 bits.

On the GPU (a backend with ``half_storage``) the arrays really are 16-bit:
:class:`PrecisionRunner` returns a
:class:`~dualnn.training.mixed_precision_gpu.HalfStorageRunner` there.

On a device that computes in float32 (the CPU), "stored in 16 bits" is simulated
exactly: each such array is rounded to the nearest float16 / bfloat16 value
(``backend.round_to_precision``) and the layers compute in float32 on the rounded values.
The numerics are those of 16-bit storage; the speed is not (the rounding is extra work),
so fit warns once with :class:`~dualnn.precision.PerformanceWarning`. Except for
``mixed_bfloat16`` on a CPU with a bfloat16 GEMM (oneMKL, AVX-512 BF16 / AMX): there the
backend's ``bfloat16_gemms`` context runs the GEMMs in bfloat16 with float32 accumulation
(weights rounded once per step) and fit does not warn. There an array whose next reader
rounds as it loads (the GEMMs of a ``Linear``, batch norm's kernels) gets no rounding pass
of its own: :meth:`PrecisionRunner.store_for` registers it as bfloat16 storage instead, with
bit-identical results.

``mixed_float16`` needs loss scaling (float16 flushes gradients below ~6e-8 to zero and
overflows above 65504); fit uses a :class:`~dualnn.precision.LossScaler`: the loss
gradient is multiplied by the scale before it is rounded, the parameter gradients are
unscaled before the optimizer (so weight decay and clipping see true gradients), and a
step with a non-finite gradient is skipped and the scale halved.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np

from ..errors import ConfigurationError
from ..layers import Linear
from ..layers.batchnorm import BatchNorm, BatchNormReLU
from ..layers.linear import LinearActivation
from ..precision import LossScaler, PerformanceWarning, Precision

_warned = set()


def resolve_precision(precision, model, dtype, loss_scaler=None):
    """The :class:`Precision` and the :class:`LossScaler` (or ``None``) of a fit call.

    Parameters
    ----------
    precision : str or Precision
    model : Layer
    dtype : str
        The model's parameter dtype.
    loss_scaler : LossScaler, optional
        Used for ``mixed_float16`` instead of a new one with PyTorch's defaults.

    Raises
    ------
    ConfigurationError
        An unknown precision name, a mixed precision on a model that is not float32, or
        a ``loss_scaler`` that is not a LossScaler.
    """
    policy = Precision(precision)
    if loss_scaler is not None and not isinstance(loss_scaler, LossScaler):
        raise ConfigurationError(f"fit: loss_scaler must be a dualnn.precision.LossScaler, "
                                 f"got {type(loss_scaler).__name__}")
    if policy.name == "float32":
        return policy, None
    if dtype != "float32":
        raise ConfigurationError(
            f"fit: precision={policy.name!r} keeps float32 master weights, so the model "
            f"must be float32; it is {dtype}")
    device = model.backend.device
    fast, why = _cpu_bfloat16_gemms(model.backend, policy)
    if device == "cpu" and fast is None and policy.name not in _warned:
        _warned.add(policy.name)
        warnings.warn(
            f"precision={policy.name!r} on the CPU rounds activations and gradients to "
            f"{policy.compute_dtype} while computing in float32: same numerics as 16-bit "
            "storage, but slower than float32 on this device"
            + (f" (no bfloat16 GEMM: {why})" if why else ""), PerformanceWarning,
            stacklevel=3)
    if not policy.loss_scaling:
        return policy, None
    return policy, loss_scaler if loss_scaler is not None else LossScaler()


def _cpu_bfloat16_gemms(backend, policy):
    """``(gemms, why)`` of the CPU bfloat16-GEMM path (``(None, None)``: not applicable)."""
    if backend.device != "cpu" or policy.compute_dtype != "bfloat16":
        return None, None
    return backend.bfloat16_gemms()


class PrecisionRunner:
    """Forward and backward of ``model`` with 16-bit storage between layers.

    For a :class:`~dualnn.layers.Sequential` the rounding happens between every step of
    its plan (a fused block, e.g. BatchNorm -> ReLU, is one step: its inside never leaves
    the kernel); any other model is rounded at its input, output and loss gradient.

    Parameters
    ----------
    model : Layer
    policy : Precision
    """

    def __new__(cls, model, policy):
        # A backend that stores 16 bits for real (the GPU) gets its own runner.
        if cls is PrecisionRunner and getattr(model.backend, "half_storage", False):
            from .mixed_precision_gpu import HalfStorageRunner

            return HalfStorageRunner(model, policy)
        return super().__new__(cls)

    def __init__(self, model, policy):
        from ..layers import Sequential

        self.model = model
        self.backend = model.backend
        self.store = policy.compute_dtype
        self.sequential = isinstance(model, Sequential)
        self.gemms = _cpu_bfloat16_gemms(self.backend, policy)[0]
        """The backend's bfloat16 GEMM context, or ``None`` (GEMMs in float32)."""

    def _gemm_scope(self):
        return self.gemms.active() if self.gemms is not None else contextlib.nullcontext()

    def round(self, a):
        """``a`` as stored: rounded to the policy's 16-bit type, float32."""
        return self.backend.round_to_precision(a, self.store)

    def store_for(self, a, reader, backward=False):
        """``a`` as stored for ``reader`` (the plan step that reads it next): with bfloat16
        GEMMs, when ``reader`` reads it only through GEMMs and batch-norm kernels, its
        rounding is left to them (``Bfloat16Gemms.defer``: no pass of its own); else
        :meth:`round`."""
        if (self.gemms is not None and _rounds_on_load(reader, backward)
                and _deferrable(a)):
            return self.gemms.defer(a)
        return self.round(a)

    def forward(self, x):
        """Training forward of ``x`` (batch, features) -> rounded output."""
        if self.gemms is not None:
            self.gemms.begin_step([p.data for p in self.model.parameters()])
        with self._gemm_scope():
            return self._forward(x)

    def _forward(self, x):
        model = self.model
        if not self.sequential:
            return self.round(model.forward(self.round(x), training=True))
        model.check_input(x)
        model._input_shapes = None  # its buffers are not used on this path
        steps = [step for _, step in model.plan()]
        x = self.store_for(x, steps[0]) if steps else self.round(x)
        for position, step in enumerate(steps):
            y = step.forward(x, True)
            last = position == len(steps) - 1
            x = self.round(y) if last else self.store_for(y, steps[position + 1])
        return x

    def backward(self, dy):
        """Backward of ``dy`` (the loss gradient, already scaled); no input gradient."""
        with self._gemm_scope():
            self._backward(dy)

    def _backward(self, dy):
        if not self.sequential:
            self.model.backward(self.round(dy))
            return
        steps = self.model.plan()
        dy = self.store_for(dy, steps[-1][1], backward=True) if steps else self.round(dy)
        for position in range(len(steps) - 1, -1, -1):
            step = steps[position][1]
            if position == 0:
                kwargs = {"input_grad": False} if "input_grad" in step.backward_options else {}
                step.backward(dy, **kwargs)
                return
            dy = self.store_for(step.backward(dy), steps[position - 1][1], backward=True)


def _deferrable(a):
    return (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim == 2
            and a.flags.c_contiguous)


def _rounds_on_load(step, backward):
    """Whether plan step ``step`` reads its input (``backward``: its output gradient)
    only through the NumPy backend's GEMMs and batch-norm kernels, which round a deferred
    bfloat16 array as they load it."""
    if type(step) is Linear:
        # forward: x W^T (and x kept for dW = dy^T x); backward: dy^T x and dy W, plus
        # the bias gradient's sum over dy, which reads float32
        return not backward or step.bias is None
    if type(step) is LinearActivation:
        return not backward  # its backward starts with the activation's, in float32
    bn = step.layers[0] if type(step) is BatchNormReLU else step
    if type(bn) is not BatchNorm:
        return False
    # ghost batches and synchronized statistics read slices and go through other code
    return bn.ghost_batch_size is None and not bn.sync
