"""One optimizer step of :func:`dualnn.fit`, over one batch split into micro-batches.

``fit(..., batch_size=B, micro_batch_size=m)`` runs forward and backward on pieces of at
most ``m`` rows and lets the parameter gradients add up (every layer's backward adds to
``p.grad``) before ONE optimizer step for the ``B`` rows. For a loss with
``reduction="mean"``, piece ``i`` of ``m_i`` rows contributes its mean loss times
``m_i / B_actual``, where ``B_actual`` is the number of rows actually in the batch (a
short last batch of an epoch divides by its own size, not by ``B``). The sum is then
exactly the mean loss over the batch, and without batch norm the step equals the
full-batch step up to floating-point rounding.

Batch norm normalizes each micro-batch with its own statistics (ghost batch norm with
ghost batches of ``m`` rows) and moves its running statistics once per micro-batch. A
last piece of one row, which batch norm cannot normalize, joins the piece before it.

:func:`resolve_micro_batch` checks, before anything changes, that one micro-batch fits in
the device's free memory (:func:`dualnn.memory.free_device_bytes`) and resolves
``micro_batch_size="auto"`` to the largest piece that does. The free memory counted is the
device's free bytes plus what the parameters, gradients and optimizer state already hold
(:func:`held_bytes`), since the estimate includes them.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .. import memory as _summary
from ..errors import ConfigurationError, NonFiniteError, ShapeError
from .checks import to_device
from .feeder import output_slot

AUTO_HEADROOM = 0.85
"""``"auto"`` plans for this share of the free memory: the estimate is ~15% exact."""


def check_micro_batch_size(value):
    """``value`` validated: None, ``"auto"`` or a positive int."""
    if value is None or value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigurationError(
            f"fit: micro_batch_size must be a positive int, 'auto' or None, got {value!r}")
    return int(value)


def resolve_micro_batch(model, optimizer, batch_size, micro_batch_size, precision,
                        min_rows=1):
    """The micro-batch size fit will use (``None`` = the whole batch in one pass).

    Parameters
    ----------
    model, optimizer
    batch_size : int
        Rows of a full batch (at most the dataset's rows).
    micro_batch_size : None, "auto" or int
    precision : Precision
    min_rows : int
        Smallest usable piece (2 with batch norm).

    Raises
    ------
    ShapeError
        Micro-batches smaller than ``min_rows``.
    DeviceMemoryError
        A step of the requested size does not fit (message: the estimate and the
        ``micro_batch_size`` that would fit); with ``"auto"``, not even ``min_rows`` rows.
    """
    if isinstance(micro_batch_size, int) and micro_batch_size < min_rows < batch_size:
        raise ShapeError(
            f"fit: micro_batch_size={micro_batch_size} gives {micro_batch_size}-row "
            f"micro-batches, which the model's BatchNorm cannot normalize in training (it "
            f"needs at least {min_rows} rows); use micro_batch_size >= {min_rows}")
    free = _summary.free_device_bytes(model.backend)
    if free is not None:
        free += held_bytes(model)  # the estimate counts them, but they already exist
    if micro_batch_size == "auto":
        if free is None or _describable(model) is False:
            return None
        budget = int(free * AUTO_HEADROOM)
        best = _largest_fitting(model, optimizer, precision, batch_size, budget)
        if best < min_rows:
            _summary.check_fits(model, min_rows, optimizer, precision, budget)
        return None if best >= batch_size else best
    rows = batch_size if micro_batch_size is None else min(micro_batch_size, batch_size)
    if free is not None and _describable(model):
        _summary.check_fits(model, rows, optimizer, precision, free)
    return None if micro_batch_size is None or micro_batch_size >= batch_size \
        else micro_batch_size


def held_bytes(model):
    """Bytes the model's parameters, gradients and optimizer state already occupy.

    :func:`~dualnn.memory.estimate_memory` counts them in a step's peak, but they are
    allocated before training starts, so they are not part of the free memory to find.
    """
    total = 0
    for p in model.parameters():
        total += p.data.nbytes + getattr(p.grad, "nbytes", 0)
        total += sum(getattr(v, "nbytes", 0) for v in getattr(p, "state", {}).values())
    return int(total)


def _describable(model):
    try:
        _summary.estimate_memory(model, 1)
    except (ConfigurationError, AttributeError, TypeError):
        return False  # a model summary() cannot walk: nothing to check against
    return True


def _largest_fitting(model, optimizer, precision, batch_size, budget):
    """Largest ``m <= batch_size`` whose estimate fits ``budget`` (0 if none)."""
    lo, hi = 0, batch_size
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _summary.estimate_memory(model, mid, optimizer, precision) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def micro_slices(n, micro, min_rows=1):
    """``[(start, stop), ...]`` covering ``n`` rows in pieces of ``micro`` rows.

    A last piece shorter than ``min_rows`` joins the one before it.
    """
    if micro is None or micro >= n:
        return [(0, n)]
    bounds = [(s, min(s + micro, n)) for s in range(0, n, micro)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_rows:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def layer_label(model, prefix):
    """``"2 (Linear)"`` for the parameter-name prefix ``"2"`` of a Sequential."""
    if prefix is None:
        return None
    layer = model
    try:
        for part in str(prefix).split("."):
            layer = layer.children()[int(part)]
    except (ValueError, IndexError):
        return str(prefix)
    return f"{prefix} ({type(layer).__name__})"


def first_nonfinite_output(model, x):
    """Label of the first layer whose (evaluation-mode) output is not finite, or None."""
    backend = model.backend
    try:
        with np.errstate(all="ignore"):
            for index, layer in enumerate(model.children()):
                x = layer.forward(x, training=False)
                if not backend.all_finite(x):
                    return f"{index} ({type(layer).__name__})"
    except Exception:  # noqa: BLE001 - a diagnostic only
        return None
    return None


class StepResult:
    """What one step left for the loop's bookkeeping.

    Attributes
    ----------
    value : float or None
        The batch's loss on the host (steps that read it), else None: the loss is then
        summed on the device in :attr:`StepRunner.loss_sum`.
    hits : array scalar or None
        Correct predictions (classification, when counted on the host side).
    stepped : bool
        False when the loss scaler skipped the update (a non-finite scaled gradient).
    """

    __slots__ = ("hits", "stepped", "value")

    def __init__(self, value, hits, stepped):
        self.value, self.hits, self.stepped = value, hits, stepped


class StepRunner:
    """Forward, backward and the optimizer update of one batch (see the module notes).

    Parameters
    ----------
    model, loss_fn, optimizer
    dtype : str
        The model's dtype (host batches are cast to it on the device).
    labels : bool
        ``y`` holds integer labels.
    micro_batch_size : int or None
    min_rows : int
        Smallest piece (2 with batch norm).
    guard_each_step : bool
        Read the loss every micro-batch and check gradients in ``optimizer.step``.
    precision_runner : PrecisionRunner or None
        16-bit storage between layers (mixed precision), else the model's own passes.
    scaler : LossScaler or None
    before_step : callable or None
        Called right before each optimizer step (fit runs the callbacks'
        ``on_step_begin`` there, so per-step schedules set the rate of the coming update).
    """

    def __init__(self, model, loss_fn, optimizer, dtype, labels, micro_batch_size, min_rows,
                 guard_each_step, precision_runner=None, scaler=None, before_step=None):
        self.model = model
        self.backend = model.backend
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.dtype = dtype
        self.labels = labels
        self.micro = micro_batch_size
        self.min_rows = min_rows
        self.guard = guard_each_step
        self.precision = precision_runner
        self.scaler = scaler
        self.before_step = before_step
        self.per_sample = getattr(loss_fn, "reduction", "mean") == "mean"
        self.classify = None
        self.start_epoch(guard_each_step, count_on_device=False)
        from .loop import backward_without_input_grad  # loop imports this module

        self._backward = backward_without_input_grad

    def start_epoch(self, host_reads, count_on_device):
        """Reset the epoch's running sums. ``host_reads``: the loss is read every step
        (``StepResult.value``), else summed on the device in :attr:`loss_sum`;
        ``count_on_device``: correct predictions summed in :attr:`correct_sum` (no read)."""
        self.guard = host_reads
        self.count_on_device = count_on_device
        self.loss_sum = None
        self.correct_sum = None

    def run(self, xd, yd, epoch, step, restore, device_check=None):
        """Train on the batch ``(xd, yd)`` (device arrays, or host arrays to move); returns
        a :class:`StepResult`.

        ``restore()`` puts batch norm's running statistics back (called before the
        diagnostic forward of a non-finite loss). ``device_check(loss)``, if given, runs
        after the last backward and before the update (the device-side finite check).
        Raises :class:`NonFiniteError` with ``epoch`` and ``step`` in the message.
        """
        backend, xp = self.backend, self.backend.xp
        nb = len(xd)
        value = 0.0 if self.guard else None
        hits = None
        pieces = micro_slices(nb, self.micro, self.min_rows)
        for start, stop in pieces:
            whole = len(pieces) == 1
            xm = backend.asarray(xd if whole else xd[start:stop], self.dtype)
            ym = to_device(backend, yd if whole else yd[start:stop], self.labels, self.dtype)
            if self.precision is not None:
                out = self.precision.forward(xm)
            else:
                out = self.model.forward(xm, training=True, **output_slot(self.model, xm))
            loss = self.loss_fn.forward(out, ym)
            share = (stop - start) / nb if self.per_sample else 1.0
            if self.guard:
                piece = backend.item(loss)
                if not math.isfinite(piece):
                    restore()
                    layer = first_nonfinite_output(self.model, xm)
                    where = f"; first non-finite output: layer {layer}" if layer else ""
                    raise NonFiniteError(
                        f"non-finite loss ({piece}) at epoch {epoch}, step {step}{where}; "
                        "training stopped before backward, the model keeps the weights of "
                        "the last good step. Lower the learning rate, check the data, or "
                        "clip gradients (clip_grad_norm=...)",
                        epoch=epoch, step=step, layer=layer)
                value += piece * share
            else:  # summed on the device before the next piece reuses the loss slot
                weight = share * (nb if self.per_sample else 1)
                self.loss_sum = backend.accumulate(self.loss_sum, loss, weight)
            if self.classify is None:
                self.classify = self.labels and len(out.shape) == 2 and out.shape[1] > 1
            if self.classify:
                if getattr(self, "count_on_device", False):
                    self.correct_sum = backend.count_correct(out, ym, self.correct_sum)
                else:
                    h = xp.sum(xp.astype(xp.argmax(out, axis=1) == ym, xp.int64))
                    hits = h if hits is None else hits + h
            dy = self.loss_fn.backward()
            if share != 1.0:
                dy = dy * share
            if self.scaler is not None:  # in place: dL/dy is this step's own buffer
                writable = getattr(getattr(dy, "flags", None), "writeable", True)
                dy = self.scaler.scale(dy, out=dy if writable else None)
            if self.precision is not None:
                self.precision.backward(dy)
            else:
                self._backward(self.model, dy)
        if device_check is not None:
            device_check(loss)
        stepped = self.optimizer_step(epoch, step)
        return StepResult(value, hits, stepped)

    def optimizer_step(self, epoch, step):
        """THE place where fit updates the parameters: once per batch, after every
        micro-batch's backward. Returns False when the loss scaler skipped the update
        (schedules and step counts must not advance then), None when that is known only
        on the device (see :meth:`sync_skipped`)."""
        if self.before_step is not None:
            self.before_step()
        try:
            if self.scaler is None:
                self.optimizer.step(check_finite=self.guard)
                return True
            # the update kernels unscale (weight decay sees true gradients) and skip on
            # the device flag: stepped is None when only the device knows
            stepped = self.scaler.step(self.optimizer, check_finite=self.guard)
            self.scaler.update()
            return stepped
        except NonFiniteError as exc:
            label = layer_label(self.model, exc.layer)
            raise NonFiniteError(
                f"non-finite gradient at epoch {epoch}, step {step}, first in layer "
                f"{label}: {exc}. The model keeps the weights of the last good step",
                epoch=epoch, step=step, layer=label) from None
        finally:
            if self.scaler is not None and (self.scaler._unscaled or self.scaler._checked):
                self.scaler._reset_step(clear_flag=True)  # a failed step leaves no flag

    def sync_skipped(self):
        """Steps the loss scaler skipped since the last call that only the device knew
        (one read; 0 without a scaler or when the flag is read every step)."""
        return 0 if self.scaler is None else self.optimizer.sync_skipped()


__all__ = ["AUTO_HEADROOM", "StepResult", "StepRunner",
           "check_micro_batch_size", "held_bytes", "micro_slices", "resolve_micro_batch"]
