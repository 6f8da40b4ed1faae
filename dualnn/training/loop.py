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
- **Validate first, all-or-nothing steps.** Arguments are checked before any state changes
  (:func:`dualnn.training.checks.check_data`); a step that does not complete is rolled
  back, Ctrl-C stops after the current step and returns the partial :class:`History`
  (``history.stopped``). The "Errors and guarantees" page of the documentation has the
  details.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np

from ..data.loader import DataLoader
from ..errors import ConfigurationError, NonFiniteError, ShapeError
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
from .progress import make_bar, progress_enabled, write_line

__all__ = ["History", "TrainingRun", "evaluate", "fit", "predict", "progress_enabled"]


def _layer_label(model, prefix):
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


def _first_nonfinite_output(model, x):
    """Label of the first layer whose (evaluation-mode) output is not finite, or None."""
    backend = model.backend
    try:
        with np.errstate(all="ignore"):
            return _first_nonfinite_child(model, x, backend)
    except Exception:  # a diagnostic only
        return None


def _first_nonfinite_child(model, x, backend):
    for index, layer in enumerate(model.children()):
        x = layer.forward(x, training=False)
        if not backend.all_finite(x):
            return f"{index} ({type(layer).__name__})"
    return None


def _snapshot_buffers(model):
    backend = model.backend
    return [(owner, attr, backend.copy(getattr(owner, attr)))
            for _, owner, attr in model._buffer_owners()]


def _restore_buffers(model, snapshot):
    backend = model.backend
    for owner, attr, saved in snapshot or ():
        backend.assign(getattr(owner, attr), saved)


# ---------------------------------------------------------------------------------- fit

def fit(model, loss_fn, optimizer, X, y=None, epochs=1, batch_size=32, shuffle=True,
        validation_data=None, callbacks=(), progress=True, *, input_noise=0.0,
        validation_batch_size=1024, check_finite=None, log_interval=None):
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
    NonFiniteError
        The loss or a gradient became NaN/inf (``.epoch``, ``.step``, ``.layer``).

    Any exception during training (also from a callback) leaves the model, the optimizer
    and batch-norm statistics as they were after the last completed step, and carries the
    partial History as ``exc.history`` (``exc.history.stopped`` says where).
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
    cpu = backend.device == "cpu"
    guard_each_step = cpu if check_finite is None else bool(check_finite)
    steps_per_epoch = len(loader)
    if log_interval is None:
        log_interval = max(1, steps_per_epoch // 20)
    show = progress_enabled(progress)

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
    return _fit_epochs(model, loss_fn, train_loss, optimizer, loader, epochs, dtype, labels,
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


def _fit_epochs(model, loss_fn, train_loss, optimizer, loader, epochs, dtype, labels,
                guard_each_step, log_interval, show, callbacks, validation_data, X_val, y_val,
                validation_batch_size):
    start = int(model.epochs_trained)
    history = History()
    run = TrainingRun(model, optimizer, loss_fn, history, start + 1, start + int(epochs))
    with DeferredInterrupt() as interrupt:
        try:
            optimizer.zero_grad()
            feeder = feed(model.backend, loader, dtype, labels) if epochs else None
            callbacks.on_train_begin(run)
            for epoch in range(start + 1, start + int(epochs) + 1):
                run.epoch = epoch
                run.step = 0
                callbacks.on_epoch_begin(run, epoch)
                logs = {"lr": optimizer.lr}
                logs.update(_train_epoch(model, train_loss, optimizer, loader, epoch, dtype,
                                         labels, guard_each_step, log_interval, show, run,
                                         interrupt, feeder))
                model.epochs_trained = epoch
                if validation_data is not None:
                    scores = _evaluate_checked(model, loss_fn, X_val, y_val,
                                               validation_batch_size)
                    logs.update({f"val_{key}": value for key, value in scores.items()})
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
    if interrupt.pending:
        interrupt.pending = False
        raise KeyboardInterrupt


def _train_epoch(model, loss_fn, optimizer, loader, epoch, dtype, labels, guard_each_step,
                 log_interval, show, run, interrupt, feeder=None):
    backend = model.backend
    xp = backend.xp
    per_sample = getattr(loss_fn, "reduction", "mean") == "mean"
    loss_total = 0.0           # host running sum (guarded path)
    loss_device = None         # device running sum (GPU path)
    correct_total = 0
    correct_device = None
    read_correct_on_host = backend.device == "cpu"
    # On a device, the per-step guard checks loss and gradients there and reads one
    # vector of flags per step; the running loss stays on the device as without guard.
    host_guard = guard_each_step and read_correct_on_host
    device_guard = guard_each_step and not host_guard
    seen = 0
    classify = None
    bar = make_bar(loader.samples_per_epoch, epoch, run.last_epoch) if show else None
    started = time.perf_counter()
    step = 0
    last_read_step = 0
    try:
        for xd, yd, nb in (feeder if feeder is not None else feed(backend, loader, dtype, labels)):
            step += 1
            # Batch norm's running statistics move in the training forward: copied here
            # (a few small arrays, no host sync), put back if the step does not complete.
            snapshot = _snapshot_buffers(model)
            try:
                out = model.forward(xd, training=True, **output_slot(model, xd))
                loss = loss_fn.forward(out, yd)
                weight = nb if per_sample else 1
                if host_guard:
                    value = backend.item(loss)
                    if not math.isfinite(value):
                        _restore_buffers(model, snapshot)
                        layer = _first_nonfinite_output(model, xd)
                        where = f"; first non-finite output: layer {layer}" if layer else ""
                        raise NonFiniteError(
                            f"non-finite loss ({value}) at epoch {epoch}, step {step}{where}; "
                            "training stopped before backward, the model keeps the weights "
                            "of the last good step. Lower the learning rate, check the data, "
                            "or clip gradients (clip_grad_norm=...)",
                            epoch=epoch, step=step, layer=layer)
                if classify is None:
                    classify = labels and len(out.shape) == 2 and out.shape[1] > 1
                if classify and read_correct_on_host:
                    hits = xp.sum(xp.astype(xp.argmax(out, axis=1) == yd, xp.int64))
                backward_without_input_grad(model, loss_fn.backward())
                if device_guard:
                    _device_guard(model, optimizer, loss, snapshot, xd, epoch, step)
                try:
                    optimizer.step(check_finite=host_guard)
                except NonFiniteError as exc:
                    label = _layer_label(model, exc.layer)
                    raise NonFiniteError(
                        f"non-finite gradient at epoch {epoch}, step {step}, first in layer "
                        f"{label}: {exc}. The model keeps the weights of the last good step",
                        epoch=epoch, step=step, layer=label) from None
            except BaseException:
                _restore_buffers(model, snapshot)
                optimizer.zero_grad()
                raise
            optimizer.zero_grad()
            run.step = step
            # the step is complete: only now does it count
            if host_guard:
                loss_total += value * weight
            else:
                loss_device = backend.accumulate(loss_device, loss, weight)
            if classify:
                if read_correct_on_host:
                    correct_total += int(hits)
                else:
                    correct_device = backend.count_correct(out, yd, correct_device)
            seen += nb
            if not host_guard and (step % log_interval == 0):
                loss_total, correct_read = _read_totals(backend, loss_device, correct_device,
                                                        epoch, last_read_step, step)
                correct_total = correct_read if correct_read is not None else correct_total
                last_read_step = step
            if bar is not None:
                bar.update(nb)
                if host_guard or step % log_interval == 0:
                    elapsed = max(time.perf_counter() - started, 1e-9)
                    bar.set_postfix(loss=f"{loss_total / max(seen if per_sample else step, 1):.4f}",
                                    samples_s=f"{seen / elapsed:.0f}", refresh=False)
            _raise_if_interrupted(interrupt)
        if not host_guard and loss_device is not None and last_read_step != step:
            # the epoch's one read: it waits for every queued step, so no synchronize
            loss_total, correct_read = _read_totals(backend, loss_device, correct_device,
                                                    epoch, last_read_step, step)
            correct_total = correct_read if correct_read is not None else correct_total
            last_read_step = step
        elif host_guard or loss_device is None:
            backend.synchronize()
        elapsed = max(time.perf_counter() - started, 1e-9)
    finally:
        if bar is not None:
            bar.close()
    if correct_device is not None and last_read_step != step:
        correct_total = int(backend.item(correct_device))
    logs = {"loss": loss_total / max(seen if per_sample else step, 1)}
    if classify:
        logs["accuracy"] = correct_total / max(seen, 1)
    logs["samples_per_sec"] = seen / elapsed
    logs["epoch_time"] = elapsed
    return logs


def _device_guard(model, optimizer, loss, snapshot, xd, epoch, step):
    """``check_finite=True`` on a device: loss and every gradient checked there, one read."""
    bad = optimizer.first_nonfinite(extra=(loss,))
    if bad < 0:
        return
    if bad == 0:
        _restore_buffers(model, snapshot)
        layer = _first_nonfinite_output(model, xd)
        where = f"; first non-finite output: layer {layer}" if layer else ""
        raise NonFiniteError(
            f"non-finite loss at epoch {epoch}, step {step}{where}; training stopped before "
            "the update, the model keeps the weights of the last good step. Lower the "
            "learning rate, check the data, or clip gradients (clip_grad_norm=...)",
            epoch=epoch, step=step, layer=layer)
    p = optimizer.params[bad - 1]
    label = _layer_label(model, p.name.rpartition(".")[0] or p.name)
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
