"""The training loop: :func:`fit`, :func:`evaluate`, :func:`predict` and :class:`History`.

``fit`` runs classic mini-batch training: every epoch draws a new order of the rows from
the model backend's seeded host generator, cuts it into ``ceil(n / batch_size)`` batches
(the last one partial), and for each batch runs forward, loss, backward and one optimizer
step. Host data (NumPy arrays, memory-mapped ``.npy`` files) moves to the model's device one
batch at a time, cast to the model's dtype.

Decisions users can rely on
---------------------------
- **Epoch counter.** The number of epochs a model has been trained for is kept on the model,
  as ``model.epochs_trained`` (0 for a new model). ``fit(..., epochs=n)`` trains ``n`` *more*
  epochs numbered ``epochs_trained + 1 ... epochs_trained + n``; :func:`dualnn.save` stores
  the counter and :func:`dualnn.load` restores it, so a resumed run's :class:`History`
  continues the count.
- **A final batch of one row is dropped for models with a BatchNorm.** Batch norm's
  training forward cannot normalize a single row (its batch variance is undefined), so when
  ``n % batch_size == 1`` and the model contains a :class:`~dualnn.layers.BatchNorm`, that
  last row of the (shuffled) epoch is skipped; a different row each epoch when shuffling.
- **Non-finite guard.** On the CPU the loss is read after every step: a NaN/inf loss stops
  training *before* backward, a NaN/inf gradient stops it inside
  ``optimizer.step(check_finite=True)`` before any parameter changes, and batch norm's
  running statistics are rolled back to the last good step. Either way
  :class:`~dualnn.errors.NonFiniteError` names the epoch, the step and the layer, and the
  model holds the weights of the last good step. On a GPU the running loss stays on the
  device and is read once per log interval: the error then names the
  interval, and the weights may include the bad steps of that interval; pass
  ``check_finite=True`` to check every step there too (loss and gradients are checked
  on the device and read back together: one host sync per step).
- **Micro-batches and mixed precision.** ``micro_batch_size`` splits each batch into
  pieces whose gradients accumulate into one optimizer step
  (:mod:`dualnn.training.accumulate`, where the one optimizer-step call lives);
  ``precision`` stores activations and gradients in 16 bits
  (:mod:`dualnn.training.mixed_precision`). Steps are always counted per optimizer step.
- **Validate first, all-or-nothing steps.** Arguments are checked before any state changes
  (:func:`dualnn.training.checks.check_data`); a step that does not complete is rolled
  back, Ctrl-C stops after the current step and returns the partial :class:`History`
  (``history.stopped``). The "Errors and guarantees" page of the documentation has the
  details.

Why this module is long: the epoch loop's bookkeeping (device-side running sums read
once per log interval, the per-step guard on either device, rollback of an unfinished
step, interruption) must be read in one piece to be checked; the step itself lives in
:mod:`~dualnn.training.accumulate`, data feeding in :mod:`~dualnn.training.feeder`,
validation in :mod:`~dualnn.training.checks` and workers in :mod:`~dualnn.training.workers`.
"""

from __future__ import annotations

import copy
import functools
import math
import time

import numpy as np

from ..data.loader import DataLoader
from ..errors import ConfigurationError, NonFiniteError, ShapeError
from . import accumulate, workers
from .callbacks import optimizer_steps
from .checks import (
    check_data,
    has_batchnorm,
    is_labels,
    model_dtype,
    output_classes,
    to_device,
)
from .feeder import feed, output_slot, reuse_loss_slot
from .history import History, TrainingRun
from .interrupt import DeferredInterrupt
from .mixed_precision import PrecisionRunner, resolve_precision
from .progress import make_bar, progress_enabled, write_line

__all__ = ["History", "TrainingRun", "evaluate", "fit", "predict", "progress_enabled"]


def _snapshot_buffers(model, into=None):
    """Copies of the model's buffers; ``into`` (the previous step's snapshot) is rewritten
    in place when it still matches, so a step allocates nothing for it."""
    backend = model.backend
    owners = [(owner, attr) for _, owner, attr in model._buffer_owners()]
    if into is not None and len(into) == len(owners) and all(
            owner is saved_owner and attr == saved_attr
            and tuple(saved.shape) == tuple(getattr(owner, attr).shape)
            and saved.dtype == getattr(owner, attr).dtype
            for (owner, attr), (saved_owner, saved_attr, saved) in zip(owners, into)):
        for owner, attr, saved in into:
            backend.assign(saved, getattr(owner, attr))
        return into
    return [(owner, attr, backend.copy(getattr(owner, attr))) for owner, attr in owners]


def _restore_buffers(model, snapshot):
    backend = model.backend
    for owner, attr, saved in snapshot or ():
        backend.assign(getattr(owner, attr), saved)


# ---------------------------------------------------------------------------------- fit

@workers.agree_on_errors
def fit(model, loss_fn, optimizer, X, y=None, epochs=1, batch_size=32, shuffle=True,
        validation_data=None, callbacks=(), progress=True, *, input_noise=0.0,
        validation_batch_size=1024, check_finite=None, log_interval=None,
        micro_batch_size=None, precision="float32", loss_scaler=None):
    """Train ``model`` with mini-batch gradient descent; returns a :class:`History`.

    Parameters
    ----------
    model : Layer
        Usually a :class:`~dualnn.layers.Sequential`; trained in place.
    loss_fn : Loss
    optimizer : Optimizer
        Built on ``model.parameters()``.
    X : array-like (n, features), path to a ``.npy`` file, or a :class:`DataLoader`
        Host inputs (memory-mapped arrays are read batch by batch); cast to the model's
        dtype batch by batch. With a DataLoader, ``y``, ``batch_size``, ``shuffle`` and
        ``input_noise`` come from it.
    y : array-like (n,) int labels or (n, k) float targets, or path
    epochs : int
        Epochs to train *now*; numbering continues from ``model.epochs_trained``.
    batch_size : int
    shuffle : bool
        New order every epoch, from ``model.backend.host_rng`` (seeded by ``dn.seed``).
    validation_data : (X_val, y_val), optional
        Evaluated after every epoch (``val_loss``, ``val_accuracy``).
    callbacks : iterable of :class:`dualnn.callbacks.Callback`
    progress : bool
        Progress bar per epoch; also off without a terminal or with ``CI`` set
        (:func:`progress_enabled`).
    input_noise : float
        Std of Gaussian noise added to every training batch (0 = off).
    validation_batch_size : int
    check_finite : bool or None
        Check loss and gradients every step (default: on the CPU) or once per
        ``log_interval`` (default on a GPU). See the module notes.
    log_interval : int or None
        Steps between progress updates and device reads on a GPU (default: about 20 per
        epoch).
    micro_batch_size : int, "auto" or None
        Split every batch into pieces of this many rows and accumulate their gradients
        into ONE optimizer step (same update as the whole batch, at the memory of one
        piece; batch norm normalizes per piece). ``"auto"``: the largest piece that fits
        the device's free memory. ``None``: the whole batch in one pass. See
        :mod:`dualnn.training.accumulate`.
    precision : {"float32", "mixed_float16", "mixed_bfloat16"}
        Mixed: float32 master weights, 16-bit activations and gradients between layers;
        ``mixed_float16`` uses dynamic loss scaling. See
        :mod:`dualnn.training.mixed_precision`.
    loss_scaler : LossScaler, optional
        The scaler of ``mixed_float16`` (default: a new one with PyTorch's defaults).

    Returns
    -------
    History
        Also when Ctrl-C stopped training: then ``history.stopped`` says where (the state is
        that of a completed step).

    Raises
    ------
    ShapeError, NonFiniteInputError, LabelError, DataFileError, ConfigurationError
        Bad arguments, all checked before anything changes (see :mod:`dualnn.training.checks`
        and the "Errors and guarantees" page): ranks, dtypes, lengths, feature count,
        finiteness after the cast to the model's dtype, labels, rows enough for the
        model's batch norm, the optimizer's parameters, monitored metrics.
    DeviceMemoryError
        One (micro-)batch's step would not fit in the device's free memory; raised before
        anything changes, with the estimate and a ``micro_batch_size`` that fits.
    NonFiniteError
        The loss or a gradient became NaN/inf (``.epoch``, ``.step``, ``.layer``).

    Any exception during training (also from a callback) leaves the model, the optimizer
    and batch-norm statistics as they were after the last completed step, and carries the
    partial History as ``exc.history`` (``exc.history.stopped`` says where).

    After ``dn.distributed.init()`` (several ranks), ``batch_size`` is per rank and fit
    trains data-parallel: see :mod:`dualnn.training.workers`.
    """
    from .callbacks import CallbackList

    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ConfigurationError(f"fit: epochs must be an int >= 0, got {epochs!r}")
    callbacks = CallbackList(callbacks)
    backend = model.backend
    dtype = model_dtype(model)
    has_bn = has_batchnorm(model)
    if isinstance(X, DataLoader):
        if y is not None:
            raise ConfigurationError("fit: pass y inside the DataLoader, not beside it")
        check_data(model, loss_fn, X.X, X.y, "fit")
        loader = copy.copy(X)  # the user's loader is not changed
        if has_bn:
            loader.min_batch_size = max(loader.min_batch_size, 2)
    else:
        X, y = check_data(model, loss_fn, X, y, "fit")
        loader = DataLoader(X, y, batch_size, shuffle=shuffle, rng=backend.host_rng,
                            input_noise=input_noise, min_batch_size=2 if has_bn else 1)
    labels = is_labels(loader.y)
    if validation_data is not None:
        try:
            X_val, y_val = validation_data
        except (TypeError, ValueError):
            raise ConfigurationError("fit: validation_data must be a pair (X_val, y_val)") \
                from None
        X_val, y_val = check_data(model, loss_fn, X_val, y_val, "fit",
                                  names=("validation_data[0]", "validation_data[1]"))
    if has_bn and loader.batch_size < 2:
        raise ShapeError(f"fit: batch_size={loader.batch_size} gives 1-row batches, which the "
                         "model's BatchNorm cannot normalize in training; use batch_size >= 2")
    if len(loader) == 0 and epochs > 0:
        need = f"at least {loader.min_batch_size} rows per batch" + (
            " (the model has a BatchNorm, whose training forward cannot normalize one row)"
            if has_bn else "")
        raise ShapeError(f"fit: X has {loader.n} row(s); with batch_size={loader.batch_size}"
                         f"{', drop_last=True' if loader.drop_last else ''} and {need}, an "
                         "epoch would have no batch to train on")
    for name, value in (("validation_batch_size", validation_batch_size),
                        ("log_interval", log_interval)):
        if value is None and name == "log_interval":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigurationError(f"fit: {name} must be a positive int, got {value!r}")
    _check_optimizer(model, optimizer)
    _check_monitors(callbacks, validation_data is not None)
    micro_batch_size = accumulate.check_micro_batch_size(micro_batch_size)
    policy, scaler = resolve_precision(precision, model, dtype, loss_scaler)
    micro = accumulate.resolve_micro_batch(
        model, optimizer, max(1, min(loader.batch_size, loader.n)), micro_batch_size,
        policy, min_rows=2 if has_bn else 1)
    cpu = backend.device == "cpu"
    guard_each_step = cpu if check_finite is None else bool(check_finite)
    steps_per_epoch = len(loader)
    show = progress_enabled(progress)
    ctx = workers.context()
    if ctx is not None:  # several ranks: join them, shard the data, average gradients
        optimizer, loader, validation_data = workers.setup(
            ctx, model, optimizer, loader,
            None if validation_data is None else (X_val, y_val), epochs)
        if validation_data is not None:
            X_val, y_val = validation_data
        steps_per_epoch = len(loader)
        show = show and ctx.is_main
    if log_interval is None:
        log_interval = max(1, steps_per_epoch // 20)

    # On a GPU, SoftmaxCrossEntropy's per-call label check reads the labels' range back to
    # the host every step; the labels were range-checked above, so a copy of the loss
    # without it trains (the user's loss object is not changed).
    train_loss = loss_fn
    if (not cpu and labels and output_classes(model) is not None
            and getattr(loss_fn, "check_labels", False) is True):
        train_loss = copy.copy(loss_fn)
        train_loss.check_labels = False
    if not cpu:
        train_loss = reuse_loss_slot(train_loss, backend, dtype)
    runner = accumulate.StepRunner(
        model, train_loss, optimizer, dtype, labels, micro, 2 if has_bn else 1,
        guard_each_step, PrecisionRunner(model, policy) if policy.name != "float32" else None,
        scaler)
    return _fit_epochs(model, loss_fn, runner, optimizer, loader, epochs, dtype, labels,
                       guard_each_step, log_interval, show, callbacks,
                       validation_data, X_val if validation_data is not None else None,
                       y_val if validation_data is not None else None,
                       validation_batch_size)


def _check_optimizer(model, optimizer):
    mine = {id(p) for p in model.parameters()}
    params = getattr(optimizer, "params", None)
    if params is None:
        raise ConfigurationError(f"fit: optimizer must be a dualnn optimizer, got "
                                 f"{type(optimizer).__name__}")
    foreign = [getattr(p, "name", "?") for p in params if id(p) not in mine]
    if foreign:
        raise ConfigurationError(f"fit: the optimizer trains parameters that are not the "
                                 f"model's ({foreign}); build it on model.parameters()")


def _check_monitors(callbacks, has_validation):
    """A callback watching a ``val_*`` metric needs validation data: said before training."""
    if has_validation:
        return
    for cb in callbacks.callbacks:
        monitor = getattr(cb, "monitor", None)
        if not isinstance(monitor, str) or not monitor.startswith("val_"):
            continue
        if getattr(cb, "save_best_only", True) is False:
            continue  # ModelCheckpoint saving every epoch does not read the metric
        raise ConfigurationError(f"fit: {type(cb).__name__} monitors {monitor!r}, which needs "
                                 "validation_data (pass validation_data to fit, or monitor "
                                 "'loss')")


def _fit_epochs(model, loss_fn, runner, optimizer, loader, epochs, dtype, labels,
                guard_each_step, log_interval, show, callbacks, validation_data, X_val, y_val,
                validation_batch_size):
    start = int(model.epochs_trained)
    ctx = workers.context()
    history = History()
    run = TrainingRun(model, optimizer, loss_fn, history, start + 1, start + int(epochs))
    # per-step schedules count optimizer steps (never micro-batches or skipped steps)
    runner.before_step = lambda: callbacks.on_step_begin(run, optimizer_steps(optimizer))
    with DeferredInterrupt() as interrupt:
        try:
            optimizer.zero_grad()
            # several ranks: each iterates its shard through the loader (never resident)
            feeder = (feed(model.backend, loader, dtype, labels,
                           resident=False if ctx is not None else None) if epochs else None)
            callbacks.on_train_begin(run)
            for epoch in range(start + 1, start + int(epochs) + 1):
                run.epoch = epoch
                run.step = 0
                callbacks.on_epoch_begin(run, epoch)
                logs = {"lr": optimizer.lr}
                logs.update(_train_epoch(model, runner, optimizer, loader, epoch, dtype,
                                         labels, guard_each_step, log_interval, show, run,
                                         interrupt, feeder))
                model.epochs_trained = epoch
                if validation_data is not None:
                    scores = _evaluate_checked(model, loss_fn, X_val, y_val,
                                               validation_batch_size)
                    logs.update({f"val_{key}": value for key, value in scores.items()})
                if ctx is not None:
                    logs = workers.reduce_logs(ctx, logs, 0 if X_val is None else len(X_val))
                history.append(epoch, logs)
                callbacks.on_epoch_end(run, epoch, logs)
                if show and validation_data is not None:
                    shown = ", ".join(f"{k}={logs[k]:.4g}" for k in logs if k.startswith("val_"))
                    write_line(f"epoch {epoch}: {shown}")
                _raise_if_interrupted(interrupt)
                if run.stop_training:
                    history.stopped_early = epoch < run.last_epoch
                    break
            callbacks.on_train_end(run)
        except KeyboardInterrupt:
            history.stopped = {"epoch": run.epoch, "step": run.step, "reason": "interrupted"}
            if interrupt.forced:
                raise
            optimizer.zero_grad()
            callbacks.on_train_interrupted(run)
            if show:
                write_line(f"interrupted: stopped after step {run.step} of epoch {run.epoch}")
            return history
        except BaseException as exc:
            history.stopped = {"epoch": run.epoch, "step": run.step,
                               "reason": f"{type(exc).__name__}: {exc}"}
            try:
                exc.history = history
            except AttributeError:  # exceptions without a __dict__
                pass
            raise
    return history


def _raise_if_interrupted(interrupt):
    """A Ctrl-C deferred by :class:`DeferredInterrupt` takes effect here, between steps."""
    if workers.interrupt_pending(interrupt):
        interrupt.pending = False
        raise KeyboardInterrupt


def _train_epoch(model, runner, optimizer, loader, epoch, dtype, labels, guard_each_step,
                 log_interval, show, run, interrupt, feeder=None):
    backend = model.backend
    per_sample = runner.per_sample
    loss_total = 0.0           # host running sum (guarded path)
    correct_total = 0
    read_correct_on_host = backend.device == "cpu"
    # On a device, the per-step guard checks loss and gradients there and reads one
    # vector of flags per step; the running loss stays on the device as without guard.
    host_guard = guard_each_step and read_correct_on_host
    device_guard = guard_each_step and not host_guard
    runner.start_epoch(host_guard, count_on_device=not host_guard)
    seen = 0
    bar = make_bar(loader.samples_per_epoch, epoch, run.last_epoch) if show else None
    started = time.perf_counter()
    step = 0
    snapshot = None
    skipped = 0  # updates the loss scaler skipped (non-finite float16 gradients)
    last_read_step = 0
    try:
        for xd, yd, nb in (feeder if feeder is not None else feed(backend, loader, dtype, labels)):
            step += 1
            # Batch norm's running statistics move in the training forward: copied here
            # (a few small arrays, no host sync), put back if the step does not complete.
            snapshot = _snapshot_buffers(model, into=snapshot)
            check = (functools.partial(_device_guard, model, optimizer, snapshot=snapshot,
                                       xd=xd, epoch=epoch, step=step)
                     if device_guard else None)
            try:
                result = runner.run(xd, yd, epoch, step,
                                    functools.partial(_restore_buffers, model, snapshot),
                                    device_check=check)
            except BaseException:
                _restore_buffers(model, snapshot)
                optimizer.zero_grad()
                raise
            skipped += result.stepped is False
            optimizer.zero_grad()
            run.step = step
            # the step is complete: only now does it count
            if host_guard:
                loss_total += result.value * (nb if per_sample else 1)
                if runner.classify:
                    correct_total += int(result.hits)
            seen += nb
            if not host_guard and (step % log_interval == 0):
                loss_total, correct_read = _read_totals(backend, runner.loss_sum,
                                                        runner.correct_sum, epoch,
                                                        last_read_step, step)
                correct_total = correct_read if correct_read is not None else correct_total
                last_read_step = step
                skipped += runner.sync_skipped()  # a loss scaler's device skip count
            if bar is not None:
                bar.update(nb)
                if host_guard or step % log_interval == 0:
                    elapsed = max(time.perf_counter() - started, 1e-9)
                    bar.set_postfix(loss=f"{loss_total / max(seen if per_sample else step, 1):.4f}",
                                    samples_s=f"{seen / elapsed:.0f}", refresh=False)
            _raise_if_interrupted(interrupt)
        if not host_guard and runner.loss_sum is not None and last_read_step != step:
            # the epoch's one read: it waits for every queued step, so no synchronize
            loss_total, correct_read = _read_totals(backend, runner.loss_sum,
                                                    runner.correct_sum, epoch,
                                                    last_read_step, step)
            correct_total = correct_read if correct_read is not None else correct_total
            last_read_step = step
        elif host_guard or runner.loss_sum is None:
            backend.synchronize()
        skipped += runner.sync_skipped()
        elapsed = max(time.perf_counter() - started, 1e-9)
    finally:
        if bar is not None:
            bar.close()
    if runner.correct_sum is not None and last_read_step != step:
        correct_total = int(backend.item(runner.correct_sum))
    logs = {"loss": loss_total / max(seen if per_sample else step, 1)}
    if runner.classify:
        logs["accuracy"] = correct_total / max(seen, 1)
    if runner.scaler is not None:
        logs["skipped_steps"] = skipped
        logs["loss_scale"] = runner.scaler.get_scale()
    logs["samples_per_sec"] = seen / elapsed
    logs["epoch_time"] = elapsed
    return logs


def _device_guard(model, optimizer, loss, *, snapshot, xd, epoch, step):
    """``check_finite=True`` on a device: loss and every gradient checked there, one read."""
    bad = optimizer.first_nonfinite(extra=(loss,))
    if bad < 0:
        return
    if bad == 0:
        _restore_buffers(model, snapshot)
        layer = accumulate.first_nonfinite_output(model, xd)
        where = f"; first non-finite output: layer {layer}" if layer else ""
        raise NonFiniteError(
            f"non-finite loss at epoch {epoch}, step {step}{where}; training stopped before "
            "the update, the model keeps the weights of the last good step. Lower the "
            "learning rate, check the data, or clip gradients (clip_grad_norm=...)",
            epoch=epoch, step=step, layer=layer)
    p = optimizer.params[bad - 1]
    label = accumulate.layer_label(model, p.name.rpartition(".")[0] or p.name)
    raise NonFiniteError(
        f"non-finite gradient at epoch {epoch}, step {step}, first in layer {label}: "
        f"{type(optimizer).__name__}: non-finite gradient of {p.name} (shape {p.shape}, "
        f"{p.dtype}); parameters and optimizer state were not updated. The model keeps the "
        "weights of the last good step", epoch=epoch, step=step, layer=label)


def _read_together(backend, loss_device, count_device):
    """``(loss, count)`` of two 0-d device arrays in one host read."""
    xp = backend.xp
    both = backend.to_host(xp.stack([xp.astype(loss_device, xp.float64),
                                     xp.astype(count_device, xp.float64)]))
    return float(both[0]), int(both[1])


def _read_totals(backend, loss_device, correct_device, epoch, first_step, step):
    """``(running loss, correct count or None)`` read in one sync; stops on a bad loss."""
    value = correct = None
    if correct_device is not None:
        value, correct = _read_together(backend, loss_device, correct_device)
    return _read_guard(backend, loss_device, epoch, first_step, step, value=value), correct


def _read_guard(backend, loss_device, epoch, first_step, step, value=None):
    """Read the device-side running loss (one sync, unless ``value`` was read already)
    and stop on a non-finite value."""
    if value is None:
        value = backend.item(loss_device)
    if not math.isfinite(value):
        raise NonFiniteError(
            f"non-finite loss at epoch {epoch}, between steps {first_step + 1} and {step} "
            "(read once per log interval on this device; the weights may include those "
            "steps). Lower the learning rate, check the data, or pass check_finite=True "
            "to fit to stop at the exact step", epoch=epoch, step=step, layer=None)
    return value


# ---------------------------------------------------------------------------------- evaluate

def evaluate(model, loss_fn, X, y, batch_size=1024):
    """Loss (and accuracy) of ``model`` on ``(X, y)``, in evaluation mode, batched.

    Returns
    -------
    dict
        ``{"loss": float}``, plus ``"accuracy"`` when ``y`` holds integer labels and the
        model's outputs are 2-D with at least two columns (logits or probabilities).
    """
    X, y = check_data(model, loss_fn, X, y, "evaluate")
    return _evaluate_checked(model, loss_fn, X, y, batch_size)


def _evaluate_checked(model, loss_fn, X, y, batch_size):
    backend = model.backend
    dtype = model_dtype(model)
    labels = is_labels(y)
    per_sample = getattr(loss_fn, "reduction", "mean") == "mean"
    if getattr(loss_fn, "check_labels", False) is True:
        # the labels were checked on the host (check_data): no per-batch device check
        loss_fn = copy.copy(loss_fn)
        loss_fn.check_labels = False
    if backend.device != "cpu":
        loss_fn = reuse_loss_slot(loss_fn, backend, dtype)
    loader = DataLoader(X, y, batch_size, shuffle=False)
    loss_sum = None
    correct = None
    classify = None
    steps = 0
    for xb, yb in loader:
        steps += 1
        xd = backend.asarray(xb, dtype)
        yd = to_device(backend, yb, labels, dtype)
        out = model.forward(xd, training=False, **output_slot(model, xd))
        loss = loss_fn.forward(out, yd)
        loss_sum = backend.accumulate(loss_sum, loss, len(xb) if per_sample else 1)
        if classify is None:
            classify = labels and len(out.shape) == 2 and out.shape[1] > 1
        if classify:
            correct = backend.count_correct(out, yd, correct)
    n = loader.n
    if classify:
        loss_value, hits_value = _read_together(backend, loss_sum, correct)
    else:
        loss_value = backend.item(loss_sum)
    result = {"loss": loss_value / (n if per_sample else steps)}
    if classify:
        result["accuracy"] = hits_value / n
    return result


def predict(model, X, batch_size=1024):
    """The model's outputs (e.g. logits) for ``X`` as a host NumPy array; eval mode, batched.

    ``X`` is a host array (or ``.npy`` path / memory-mapped array), cast to the model's dtype
    batch by batch; the result has one row per row of ``X``.
    """
    X, _ = check_data(model, None, X, None, "predict", need_y=False)
    backend = model.backend
    dtype = model_dtype(model)
    result = None
    start = 0
    for xb in DataLoader(X, None, batch_size, shuffle=False):
        out = backend.to_host(model.forward(backend.asarray(xb, dtype), training=False))
        if result is None:
            result = np.empty((X.shape[0],) + tuple(out.shape[1:]), dtype=out.dtype)
        result[start:start + len(out)] = out
        start += len(out)
    return result


def backward_without_input_grad(model, dy):
    """``model.backward(dy)``, skipping ``dL/dinput`` where the model allows it (training
    never needs the gradient of the data)."""
    from ..layers import Sequential

    if isinstance(model, Sequential):
        return model.backward(dy, input_grad=False)
    return model.backward(dy)
