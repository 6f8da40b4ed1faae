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
  device and is read once per log interval (GPU.md rule 8): the error then names the
  interval, and the weights may include the bad steps of that interval; pass
  ``check_finite=True`` to check every step there too (one host sync per parameter).
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

from .data.loader import DataLoader, check_finite_rows, open_array
from .errors import ConfigurationError, NonFiniteError, ShapeError

__all__ = ["History", "TrainingRun", "evaluate", "fit", "predict", "progress_enabled"]


# ---------------------------------------------------------------------------------- History

class History:
    """Per-epoch records of a :func:`fit` call.

    Attributes
    ----------
    epoch : list of int
        Absolute epoch numbers (continuing after a resume: ``model.epochs_trained`` based).
    history : dict of str -> list of float
        One list per metric, aligned with :attr:`epoch`:

        - ``"loss"``: mean training loss over the epoch's samples (training mode);
        - ``"accuracy"``: training accuracy, for integer labels with 2-D outputs;
        - ``"val_loss"``, ``"val_accuracy"``: on ``validation_data`` (evaluation mode);
        - ``"samples_per_sec"``: training throughput (forward, backward, step and data);
        - ``"epoch_time"``: seconds of training in the epoch (validation excluded);
        - ``"lr"``: the optimizer's learning rate during the epoch.
    stopped_early : bool
        True when a callback (e.g. EarlyStopping) ended training before ``epochs``.
    """

    def __init__(self):
        self.epoch = []
        self.history = {}
        self.stopped_early = False

    def append(self, epoch, logs):
        self.epoch.append(int(epoch))
        for key, value in logs.items():
            column = self.history.setdefault(key, [math.nan] * (len(self.epoch) - 1))
            column.append(float(value))
        for key, column in self.history.items():
            if len(column) < len(self.epoch):
                column.append(math.nan)

    def __getitem__(self, key):
        return self.history[key]

    def __contains__(self, key):
        return key in self.history

    def __len__(self):
        return len(self.epoch)

    def last(self):
        """The logs of the last epoch, as a dict (empty before the first)."""
        return {key: column[-1] for key, column in self.history.items()} if self.epoch else {}

    def to_dict(self):
        """``{"epoch": [...], <metric>: [...]}`` (JSON-serializable)."""
        return {"epoch": list(self.epoch), **{k: list(v) for k, v in self.history.items()}}

    def __repr__(self):
        span = f"{self.epoch[0]}..{self.epoch[-1]}" if self.epoch else "none"
        return f"History(epochs={span}, metrics={sorted(self.history)})"


class TrainingRun:
    """What callbacks see of a running :func:`fit`.

    Attributes
    ----------
    model, optimizer, loss_fn, history
    epoch : int
        The current (absolute) epoch number.
    first_epoch, last_epoch : int
        The epoch numbers this ``fit`` call runs from and to.
    stop_training : bool
        Set to True (e.g. by EarlyStopping) to end training after the current epoch.
    """

    def __init__(self, model, optimizer, loss_fn, history, first_epoch, last_epoch):
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.history = history
        self.first_epoch = first_epoch
        self.last_epoch = last_epoch
        self.epoch = first_epoch - 1
        self.stop_training = False


# ---------------------------------------------------------------------------------- checks

def _leaves(model):
    return [layer for layer in model.layers() if not layer.children()]


def _input_features(model):
    leaves = _leaves(model)
    if not leaves:
        return None
    first = leaves[0]
    for attr in ("in_features", "num_features"):
        value = getattr(first, attr, None)
        if isinstance(value, int):
            return value
    return None


def _output_classes(model):
    for layer in reversed(_leaves(model)):
        value = getattr(layer, "out_features", None)
        if isinstance(value, int):
            return value
    return None


def _has_batchnorm(model):
    from .layers.batchnorm import BatchNorm
    return any(isinstance(layer, BatchNorm) for layer in model.layers())


def _host_view(model, data, what):
    """Host-side view of ``data``: device arrays of the model's backend come back to the host."""
    backend = model.backend
    if data is not None and not isinstance(data, np.ndarray) and backend.owns(data):
        return backend.to_host(data)
    return open_array(data, what)


def _check_data(model, loss_fn, X, y, who, need_y=True):
    """Validate X (and y) once, without reading a memory-mapped file into memory whole."""
    X = _host_view(model, X, f"{who}: X")
    shape = tuple(X.shape)
    if len(shape) != 2:
        raise ShapeError(f"{who}: X must be 2-D (samples, features), got shape {shape}; "
                         "reshape single samples to (1, n) and images to (n, h*w)")
    if np.dtype(X.dtype).kind not in "fiub":
        raise ShapeError(f"{who}: X must hold numbers castable to float, got dtype "
                         f"{np.dtype(X.dtype)}")
    if shape[0] == 0:
        raise ShapeError(f"{who}: X has no rows")
    features = _input_features(model)
    if features is not None and shape[1] != features:
        raise ShapeError(f"{who}: the model's first layer expects {features} features, X has "
                         f"{shape[1]} (shape {shape})")
    check_finite_rows(X, f"{who}: X")
    if y is None:
        if need_y:
            raise ShapeError(f"{who}: y (targets) is required")
        return X, None
    y = _host_view(model, y, f"{who}: y")
    if len(y.shape) < 1 or int(y.shape[0]) != shape[0]:
        raise ShapeError(f"{who}: X and y differ in length: X has {shape[0]} rows, y has shape "
                         f"{tuple(y.shape)}")
    kind = np.dtype(y.dtype).kind
    if kind not in "fiub":
        raise ShapeError(f"{who}: y must be numeric, got dtype {np.dtype(y.dtype)}")
    if kind == "f":
        check_finite_rows(y, f"{who}: y")
    elif kind in "iu" and len(y.shape) == 1 and _is_label_loss(loss_fn):
        classes = _output_classes(model)
        labels = np.asarray(y)
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or (classes is not None and high >= classes):
            bound = f"[0, {classes})" if classes is not None else ">= 0"
            raise ShapeError(f"{who}: class labels must lie in {bound} for a model with "
                             f"{classes} outputs; y holds values from {low} to {high}")
    return X, y


def _is_label_loss(loss_fn):
    from .losses import Hinge, SoftmaxCrossEntropy
    return isinstance(loss_fn, (SoftmaxCrossEntropy, Hinge))


def _is_labels(y):
    return y is not None and np.dtype(y.dtype).kind in "iu" and len(y.shape) == 1


def _model_dtype(model):
    return model.dtype or "float32"


def _to_device(backend, yb, labels, dtype):
    return backend.asarray(yb) if labels else backend.asarray(yb, dtype)


def progress_enabled(progress=True):
    """Whether :func:`fit` shows a progress bar.

    Off when ``progress`` is false, when the ``CI`` environment variable is set (to
    anything but ``""``, ``0``, ``false`` or ``no``), or when stdout or stderr (where the
    bar is drawn) is not a terminal.
    """
    if not progress:
        return False
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is None or not stream.isatty():
                return False
        except (AttributeError, ValueError):
            return False
    return True


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

    Raises
    ------
    ShapeError
        Bad X/y (rank, dtype, non-finite values, lengths, feature count, label range),
        checked once before training.
    NonFiniteError
        The loss or a gradient became NaN/inf (``.epoch``, ``.step``, ``.layer``).
    """
    from .callbacks import CallbackList

    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ConfigurationError(f"fit: epochs must be an int >= 0, got {epochs!r}")
    callbacks = CallbackList(callbacks)
    backend = model.backend
    dtype = _model_dtype(model)
    has_bn = _has_batchnorm(model)
    if isinstance(X, DataLoader):
        if y is not None:
            raise ConfigurationError("fit: pass y inside the DataLoader, not beside it")
        loader = X
        _check_data(model, loss_fn, loader.X, loader.y, "fit")
        if has_bn:
            loader.min_batch_size = max(loader.min_batch_size, 2)
    else:
        X, y = _check_data(model, loss_fn, X, y, "fit")
        loader = DataLoader(X, y, batch_size, shuffle=shuffle, rng=backend.host_rng,
                            input_noise=input_noise, min_batch_size=2 if has_bn else 1)
    labels = _is_labels(loader.y)
    if validation_data is not None:
        try:
            X_val, y_val = validation_data
        except (TypeError, ValueError):
            raise ConfigurationError("fit: validation_data must be a pair (X_val, y_val)") \
                from None
        X_val, y_val = _check_data(model, loss_fn, X_val, y_val, "fit: validation_data")
    cpu = backend.device == "cpu"
    guard_each_step = cpu if check_finite is None else bool(check_finite)
    steps_per_epoch = len(loader)
    if log_interval is None:
        log_interval = max(1, steps_per_epoch // 20)
    show = progress_enabled(progress)

    # On a GPU, SoftmaxCrossEntropy's per-call label check reads the labels' range back to
    # the host every step; the labels were range-checked above, so skip it during fit.
    relax_labels = (not cpu and labels and _output_classes(model) is not None
                    and getattr(loss_fn, "check_labels", False) is True)
    if relax_labels:
        loss_fn.check_labels = False
    try:
        return _fit_epochs(model, loss_fn, optimizer, loader, epochs, dtype, labels,
                           guard_each_step, log_interval, show, callbacks,
                           validation_data, X_val if validation_data is not None else None,
                           y_val if validation_data is not None else None,
                           validation_batch_size)
    finally:
        if relax_labels:
            loss_fn.check_labels = True


def _fit_epochs(model, loss_fn, optimizer, loader, epochs, dtype, labels, guard_each_step,
                log_interval, show, callbacks, validation_data, X_val, y_val,
                validation_batch_size):
    start = int(getattr(model, "epochs_trained", 0) or 0)
    history = History()
    run = TrainingRun(model, optimizer, loss_fn, history, start + 1, start + int(epochs))
    optimizer.zero_grad()
    callbacks.on_train_begin(run)
    for epoch in range(start + 1, start + int(epochs) + 1):
        run.epoch = epoch
        callbacks.on_epoch_begin(run, epoch)
        logs = {"lr": optimizer.lr}
        logs.update(_train_epoch(model, loss_fn, optimizer, loader, epoch, dtype, labels,
                                 guard_each_step, log_interval, show, run.last_epoch))
        model.epochs_trained = epoch
        if validation_data is not None:
            scores = _evaluate_checked(model, loss_fn, X_val, y_val, validation_batch_size)
            logs.update({f"val_{key}": value for key, value in scores.items()})
        history.append(epoch, logs)
        callbacks.on_epoch_end(run, epoch, logs)
        if show and validation_data is not None:
            shown = ", ".join(f"{k}={logs[k]:.4g}" for k in logs if k.startswith("val_"))
            _write_line(f"epoch {epoch}: {shown}")
        if run.stop_training:
            history.stopped_early = epoch < run.last_epoch
            break
    callbacks.on_train_end(run)
    return history


def _write_line(text):
    try:
        from tqdm import tqdm
        tqdm.write(text, file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        print(text, file=sys.stderr)


def _make_bar(total, epoch, last_epoch):
    from tqdm import tqdm
    return tqdm(total=total, desc=f"epoch {epoch}/{last_epoch}", unit="sample",
                unit_scale=True, leave=True, file=sys.stderr, dynamic_ncols=True)


def _train_epoch(model, loss_fn, optimizer, loader, epoch, dtype, labels, guard_each_step,
                 log_interval, show, last_epoch):
    backend = model.backend
    xp = backend.xp
    per_sample = getattr(loss_fn, "reduction", "mean") == "mean"
    loss_total = 0.0           # host running sum (guarded path)
    loss_device = None         # device running sum (GPU path)
    correct_total = 0
    correct_device = None
    read_correct_on_host = backend.device == "cpu"
    seen = 0
    classify = None
    bar = _make_bar(loader.samples_per_epoch, epoch, last_epoch) if show else None
    started = time.perf_counter()
    step = 0
    last_read_step = 0
    try:
        for xb, yb in loader:
            step += 1
            nb = len(xb)
            xd = backend.asarray(xb, dtype)
            yd = _to_device(backend, yb, labels, dtype)
            snapshot = _snapshot_buffers(model) if guard_each_step else None
            out = model.forward(xd, training=True)
            loss = loss_fn.forward(out, yd)
            weight = nb if per_sample else 1
            if guard_each_step:
                value = backend.item(loss)
                if not math.isfinite(value):
                    _restore_buffers(model, snapshot)
                    layer = _first_nonfinite_output(model, xd)
                    where = f"; first non-finite output: layer {layer}" if layer else ""
                    raise NonFiniteError(
                        f"non-finite loss ({value}) at epoch {epoch}, step {step}{where}; "
                        "training stopped before backward, the model keeps the weights of "
                        "the last good step. Lower the learning rate, check the data, or "
                        "clip gradients (clip_grad_norm=...)",
                        epoch=epoch, step=step, layer=layer)
                loss_total += value * weight
            else:
                term = loss * weight
                loss_device = term if loss_device is None else loss_device + term
            if classify is None:
                classify = labels and len(out.shape) == 2 and out.shape[1] > 1
            if classify:
                hits = xp.sum(xp.astype(xp.argmax(out, axis=1) == yd, xp.int64))
                if read_correct_on_host:
                    correct_total += int(hits)
                else:
                    correct_device = hits if correct_device is None else correct_device + hits
            backward_without_input_grad(model, loss_fn.backward())
            try:
                optimizer.step(check_finite=guard_each_step)
            except NonFiniteError as exc:
                _restore_buffers(model, snapshot)
                optimizer.zero_grad()
                label = _layer_label(model, exc.layer)
                raise NonFiniteError(
                    f"non-finite gradient at epoch {epoch}, step {step}, first in layer "
                    f"{label}: {exc}. The model keeps the weights of the last good step",
                    epoch=epoch, step=step, layer=label) from None
            optimizer.zero_grad()
            seen += nb
            if not guard_each_step and (step % log_interval == 0):
                loss_total = _read_guard(backend, loss_device, epoch, last_read_step, step)
                last_read_step = step
            if bar is not None:
                bar.update(nb)
                if guard_each_step or step % log_interval == 0:
                    elapsed = max(time.perf_counter() - started, 1e-9)
                    bar.set_postfix(loss=f"{loss_total / max(seen if per_sample else step, 1):.4f}",
                                    samples_s=f"{seen / elapsed:.0f}", refresh=False)
        if not guard_each_step and loss_device is not None and last_read_step != step:
            loss_total = _read_guard(backend, loss_device, epoch, last_read_step, step)
        backend.synchronize()
        elapsed = max(time.perf_counter() - started, 1e-9)
    finally:
        if bar is not None:
            bar.close()
    if correct_device is not None:
        correct_total = int(backend.item(correct_device))
    logs = {"loss": loss_total / max(seen if per_sample else step, 1)}
    if classify:
        logs["accuracy"] = correct_total / max(seen, 1)
    logs["samples_per_sec"] = seen / elapsed
    logs["epoch_time"] = elapsed
    return logs


def _read_guard(backend, loss_device, epoch, first_step, step):
    """Read the device-side running loss (one sync) and stop on a non-finite value."""
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
    X, y = _check_data(model, loss_fn, X, y, "evaluate")
    return _evaluate_checked(model, loss_fn, X, y, batch_size)


def _evaluate_checked(model, loss_fn, X, y, batch_size):
    backend = model.backend
    xp = backend.xp
    dtype = _model_dtype(model)
    labels = _is_labels(y)
    per_sample = getattr(loss_fn, "reduction", "mean") == "mean"
    loader = DataLoader(X, y, batch_size, shuffle=False)
    loss_sum = None
    correct = None
    classify = None
    steps = 0
    for xb, yb in loader:
        steps += 1
        xd = backend.asarray(xb, dtype)
        yd = _to_device(backend, yb, labels, dtype)
        out = model.forward(xd, training=False)
        loss = loss_fn.forward(out, yd) * (len(xb) if per_sample else 1)
        loss_sum = loss if loss_sum is None else loss_sum + loss
        if classify is None:
            classify = labels and len(out.shape) == 2 and out.shape[1] > 1
        if classify:
            hits = xp.sum(xp.astype(xp.argmax(out, axis=1) == yd, xp.int64))
            correct = hits if correct is None else correct + hits
    n = loader.n
    result = {"loss": backend.item(loss_sum) / (n if per_sample else steps)}
    if classify:
        result["accuracy"] = backend.item(correct) / n
    return result


def predict(model, X, batch_size=1024):
    """The model's outputs (e.g. logits) for ``X`` as a host NumPy array; eval mode, batched.

    ``X`` is a host array (or ``.npy`` path / memory-mapped array), cast to the model's dtype
    batch by batch; the result has one row per row of ``X``.
    """
    X, _ = _check_data(model, None, X, None, "predict", need_y=False)
    backend = model.backend
    dtype = _model_dtype(model)
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
    from .layers import Sequential

    if isinstance(model, Sequential):
        return model.backward(dy, input_grad=False)
    return model.backward(dy)
