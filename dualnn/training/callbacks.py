"""Callbacks for :func:`dualnn.fit`: early stopping, checkpoints, learning-rate schedules, logs.

A callback subclasses :class:`Callback` and overrides any of its hooks. Each hook receives
the :class:`~dualnn.training.TrainingRun` (``run.model``, ``run.optimizer``, ``run.history``,
``run.epoch``; set ``run.stop_training = True`` to stop after the current epoch). Epoch
numbers are absolute: they continue after a resume (``model.epochs_trained``).

:meth:`Callback.on_step_begin` runs once per *optimizer step*, just before it, with the
number of optimizer steps already taken. Step counts come from the optimizer itself
(:func:`optimizer_steps`, saved in checkpoints), so they continue after a resume; they
never count micro-batches (several micro-batches accumulate into one step), and a step
that a :class:`~dualnn.precision.LossScaler` skips (non-finite gradients) does not
advance them. The learning-rate schedules act per epoch (:class:`StepLR`,
:class:`ExponentialLR`, :class:`CosineAnnealingLR`, ``LinearWarmup(warmup_epochs=...)``)
or per optimizer step (:class:`PolynomialDecay`, ``LinearWarmup(warmup_steps=...)``).

>>> cbs = [dn.callbacks.EarlyStopping(patience=3),                        # doctest: +SKIP
...        dn.callbacks.CosineAnnealingLR(T_max=30),
...        dn.callbacks.ModelCheckpoint("best.npz", save_best_only=True),
...        dn.callbacks.CSVLogger("history.csv")]
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import os
import sys

from ..errors import ConfigurationError
from ..optim.scaling import polynomial_decay
from .atomic import write_atomic

__all__ = [
    "CSVLogger",
    "Callback",
    "CallbackList",
    "CosineAnnealingLR",
    "EarlyStopping",
    "ExponentialLR",
    "HistoryLogger",
    "JSONLogger",
    "LRSchedule",
    "LinearWarmup",
    "ModelCheckpoint",
    "PolynomialDecay",
    "StepLR",
    "optimizer_steps",
]


def optimizer_steps(optimizer):
    """How many updates ``optimizer`` has applied (its parameters' ``state["step"]``).

    Counted by the optimizer, so it survives checkpoints (the state is saved) and does not
    move when a step is skipped (a :class:`~dualnn.precision.LossScaler` overflow) or when
    a micro-batch only accumulates gradients.
    """
    return max((int(p.state.get("step", 0)) for p in optimizer.params), default=0)


def _is_main():
    """False on ranks other than 0 of a data-parallel job: only rank 0 writes files."""
    runtime = sys.modules.get("dualnn.distributed.runtime")
    return runtime is None or runtime.rank() == 0


class Callback:
    """Base class; every hook does nothing by default."""

    def on_train_begin(self, run):
        """Before the first epoch of a ``fit`` call."""

    def on_epoch_begin(self, run, epoch):
        """Before epoch ``epoch`` (absolute number) trains."""

    def on_step_begin(self, run, step):
        """Just before an optimizer step; ``step`` = optimizer steps already taken (from 0).

        Called once per optimizer step, never per micro-batch; a step a loss scaler skips
        is not counted, so the next call sees the same ``step`` again (see
        :func:`optimizer_steps`).
        """

    def on_epoch_end(self, run, epoch, logs):
        """After epoch ``epoch``; ``logs`` holds its metrics (``loss``, ``val_loss``...)."""

    def on_train_end(self, run):
        """After the last epoch (also after an early stop); not called when fit raises or
        is interrupted."""

    def on_train_interrupted(self, run):
        """After Ctrl-C stopped training at a completed step (``run.history.stopped``);
        ``fit`` then returns the partial History."""


class CallbackList(Callback):
    """Calls a sequence of callbacks in order."""

    def __init__(self, callbacks=()):
        if isinstance(callbacks, Callback):
            callbacks = [callbacks]
        self.callbacks = list(callbacks or ())
        for index, cb in enumerate(self.callbacks):
            if not isinstance(cb, Callback):
                raise ConfigurationError(
                    f"callbacks[{index}] is a {type(cb).__name__}, not a dualnn Callback")

    def on_train_begin(self, run):
        for cb in self.callbacks:
            cb.on_train_begin(run)

    def on_epoch_begin(self, run, epoch):
        for cb in self.callbacks:
            cb.on_epoch_begin(run, epoch)

    def on_step_begin(self, run, step):
        for cb in self.callbacks:
            cb.on_step_begin(run, step)

    def on_epoch_end(self, run, epoch, logs):
        for cb in self.callbacks:
            cb.on_epoch_end(run, epoch, logs)

    def on_train_end(self, run):
        for cb in self.callbacks:
            cb.on_train_end(run)

    def on_train_interrupted(self, run):
        for cb in self.callbacks:
            cb.on_train_interrupted(run)


def _resolve_mode(owner, mode, monitor):
    if mode not in ("auto", "min", "max"):
        raise ConfigurationError(f"{owner}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if monitor.endswith(("accuracy", "acc")) else "min"
    return mode


def _monitored(owner, monitor, logs):
    if monitor not in logs:
        hint = " (pass validation_data to fit)" if monitor.startswith("val_") else ""
        raise ConfigurationError(f"{owner}: monitored metric {monitor!r} is not in the logs "
                                 f"{sorted(logs)}{hint}")
    return float(logs[monitor])


class _Monitor:
    """Best-value tracking shared by EarlyStopping and ModelCheckpoint."""

    def __init__(self, owner, monitor, mode, min_delta=0.0):
        self.owner = owner
        self.monitor = monitor
        self.mode = _resolve_mode(owner, mode, monitor)
        self.min_delta = abs(float(min_delta))
        self.best = None

    def improved(self, value):
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs.

    Parameters
    ----------
    monitor : str
        A metric of the logs, default ``"val_loss"`` (needs ``validation_data``).
    patience : int
        Epochs without improvement to wait before stopping.
    min_delta : float
        A change smaller than this is not an improvement.
    restore_best_weights : bool
        At the end of training (stopped early or not), put back the parameters and buffers
        of the best epoch (default True). The optimizer state and ``model.epochs_trained``
        are not rewound.
    mode : {"auto", "min", "max"}
        ``"auto"``: maximize metrics named ``*accuracy``, minimize the others.

    Attributes
    ----------
    best, best_epoch, stopped_epoch
    """

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0,
                 restore_best_weights=True, mode="auto"):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ConfigurationError(f"EarlyStopping: patience must be an int >= 0, got "
                                     f"{patience!r}")
        self.monitor = monitor
        self.patience = patience
        self.min_delta = float(min_delta)
        self.restore_best_weights = bool(restore_best_weights)
        self.mode = mode
        self._tracker = _Monitor("EarlyStopping", monitor, mode, min_delta)
        self.on_train_begin(None)

    def on_train_begin(self, run):
        self._tracker.best = None
        self.best_epoch = None
        self.stopped_epoch = None
        self.wait = 0
        self._best_state = None

    @property
    def best(self):
        return self._tracker.best

    def on_epoch_end(self, run, epoch, logs):
        value = _monitored("EarlyStopping", self.monitor, logs)
        if self._tracker.improved(value):
            self._tracker.best = value
            self.best_epoch = epoch
            self.wait = 0
            if self.restore_best_weights:
                self._best_state = run.model.state_dict()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            run.stop_training = True

    def on_train_end(self, run):
        if self.restore_best_weights and self._best_state is not None \
                and self.best_epoch != run.epoch:
            run.model.load_state_dict(self._best_state)


class ModelCheckpoint(Callback):
    """Save a checkpoint (:func:`dualnn.save`: model, optimizer, epoch, RNG) after epochs.

    Parameters
    ----------
    path : str
        File to write; may contain ``{epoch}`` and metric fields, e.g.
        ``"ckpt-{epoch:03d}-{val_loss:.3f}.npz"``.
    monitor : str
        Metric for ``save_best_only`` (default ``"val_loss"``).
    save_best_only : bool
        Only save when ``monitor`` improves (otherwise after every epoch).
    mode : {"auto", "min", "max"}
    interrupted_path : str, optional
        Where to save when Ctrl-C stops :func:`~dualnn.fit` (at a completed step, epoch
        counter = completed epochs). Default ``interrupted.npz`` in the directory of
        ``path``; the regular checkpoints are not overwritten.
    """

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="auto",
                 interrupted_path=None):
        self.path = os.fspath(path)
        self.monitor = monitor
        self.save_best_only = bool(save_best_only)
        self._tracker = _Monitor("ModelCheckpoint", monitor, mode)
        self.last_saved = None
        if interrupted_path is None:
            interrupted_path = os.path.join(os.path.dirname(self.path), "interrupted.npz")
        self.interrupted_path = os.fspath(interrupted_path)

    def on_train_begin(self, run):
        self._tracker.best = None

    def on_epoch_end(self, run, epoch, logs):
        if self.save_best_only:
            value = _monitored("ModelCheckpoint", self.monitor, logs)
            if not self._tracker.improved(value):
                return
            self._tracker.best = value
        from .checkpoint import save
        path = self.path.format(epoch=epoch, **logs)
        if _is_main():
            save(path, run.model, run.optimizer, epoch=epoch)
        self.last_saved = path

    def on_train_interrupted(self, run):
        from .checkpoint import save
        if _is_main():
            save(self.interrupted_path, run.model, run.optimizer)
        self.last_saved = self.interrupted_path


# ---------------------------------------------------------------------------------- schedules

class LRSchedule(Callback):
    """Base of the learning-rate schedules: sets ``optimizer.lr`` before each epoch or step.

    A per-epoch schedule (``per_step = False``) takes the rate of an epoch from the number
    of epochs completed before it (``epoch - 1``, absolute, so resumed runs continue). A
    per-step schedule (``per_step = True``) takes it from the number of optimizer steps
    already taken (:func:`optimizer_steps`) before every optimizer step, and once at the
    start of each epoch (so the logged ``lr`` is that of the epoch's first step).

    The base rate is ``base_lr`` if given, else ``optimizer.initial_lr`` if set, else the
    optimizer's ``lr`` at the first use, which is then stored as ``optimizer.initial_lr``
    (checkpoints save and restore that attribute, as torch keeps ``initial_lr``).
    """

    per_step = False
    """True: :meth:`lr_at` is indexed by optimizer steps, else by completed epochs."""

    def __init__(self, base_lr=None):
        self.base_lr = base_lr

    def lr_at(self, index, base_lr):
        """The rate after ``index`` completed epochs (or optimizer steps if ``per_step``)."""
        raise NotImplementedError

    def _base(self, optimizer):
        if self.base_lr is not None:
            return float(self.base_lr)
        base = getattr(optimizer, "initial_lr", None)
        if base is None:
            base = optimizer.lr
            optimizer.initial_lr = base
        return float(base)

    def on_epoch_begin(self, run, epoch):
        index = optimizer_steps(run.optimizer) if self.per_step else epoch - 1
        run.optimizer.lr = self.lr_at(index, self._base(run.optimizer))

    def on_step_begin(self, run, step):
        if self.per_step:
            run.optimizer.lr = self.lr_at(step, self._base(run.optimizer))


def _count(owner, name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigurationError(f"{owner}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


class StepLR(LRSchedule):
    """``lr = base * gamma ** (completed_epochs // step_size)`` (as ``torch.optim.lr_scheduler.StepLR``)."""

    def __init__(self, step_size, gamma=0.1, base_lr=None):
        super().__init__(base_lr)
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ConfigurationError(f"StepLR: step_size must be a positive int, got {step_size!r}")
        self.step_size = step_size
        self.gamma = float(gamma)

    def lr_at(self, index, base_lr):
        return base_lr * self.gamma ** (index // self.step_size)


class ExponentialLR(LRSchedule):
    """``lr = base * gamma ** completed_epochs``."""

    def __init__(self, gamma, base_lr=None):
        super().__init__(base_lr)
        self.gamma = float(gamma)

    def lr_at(self, index, base_lr):
        return base_lr * self.gamma ** index


class CosineAnnealingLR(LRSchedule):
    """``lr = eta_min + (base - eta_min) (1 + cos(pi t / T_max)) / 2``, ``t = min(completed, T_max)``."""

    def __init__(self, T_max, eta_min=0.0, base_lr=None):
        super().__init__(base_lr)
        if isinstance(T_max, bool) or not isinstance(T_max, int) or T_max < 1:
            raise ConfigurationError(f"CosineAnnealingLR: T_max must be a positive int, got "
                                     f"{T_max!r}")
        self.T_max = T_max
        self.eta_min = float(eta_min)

    def lr_at(self, index, base_lr):
        t = min(index, self.T_max)
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * t / self.T_max)) / 2


class LinearWarmup(LRSchedule):
    """Ramp linearly from ``start_factor * base`` to ``base``, then follow ``then`` (another
    schedule, counted from the end of the warm-up) or stay at base.

    Give exactly one length: ``warmup_epochs`` (per epoch: the rate of epoch ``e``, with
    ``i = e - 1`` completed epochs) or ``warmup_steps`` (per optimizer step: the rate of the
    step after ``i`` optimizer steps). During the warm-up the rate is
    ``base * (start_factor + (1 - start_factor) * i / warmup)``. In step mode ``then``
    is indexed by optimizer steps too (``CosineAnnealingLR(T_max=...)`` then counts
    steps).

    Parameters
    ----------
    warmup_epochs : int, optional
    start_factor : float
    then : LRSchedule, optional
    base_lr : float, optional
    warmup_steps : int, optional (keyword-only)
    """

    def __init__(self, warmup_epochs=None, start_factor=0.1, then=None, base_lr=None, *,
                 warmup_steps=None):
        super().__init__(base_lr)
        if (warmup_epochs is None) == (warmup_steps is None):
            raise ConfigurationError("LinearWarmup: give exactly one of warmup_epochs (per "
                                     "epoch) and warmup_steps (per optimizer step), got "
                                     f"warmup_epochs={warmup_epochs!r}, "
                                     f"warmup_steps={warmup_steps!r}")
        self.per_step = warmup_steps is not None
        if self.per_step:
            warmup_steps = _count("LinearWarmup", "warmup_steps", warmup_steps, 1)
        else:
            warmup_epochs = _count("LinearWarmup", "warmup_epochs", warmup_epochs, 1)
        if then is not None and not isinstance(then, LRSchedule):
            raise ConfigurationError("LinearWarmup: then must be an LRSchedule or None")
        if then is not None and then.per_step and not self.per_step:
            raise ConfigurationError(f"LinearWarmup: then={type(then).__name__} counts "
                                     "optimizer steps; use warmup_steps=... with it")
        self.warmup_epochs = warmup_epochs
        self.warmup_steps = warmup_steps
        self.start_factor = float(start_factor)
        self.then = then

    def lr_at(self, index, base_lr):
        warmup = self.warmup_steps if self.per_step else self.warmup_epochs
        if index < warmup:
            fraction = index / warmup
            return base_lr * (self.start_factor + (1 - self.start_factor) * fraction)
        if self.then is None:
            return base_lr
        return self.then.lr_at(index - warmup, base_lr)


class PolynomialDecay(LRSchedule):
    """Per optimizer step: linear warmup, then polynomial decay to ``end_lr``.

    The rate of the step after ``i`` optimizer steps is
    :func:`dualnn.optim.polynomial_decay` ``(i, total_steps, base, end_lr, power,
    warmup_steps)``: ``base * (i + 1) / warmup_steps`` during the warm-up, then
    ``end_lr + (base - end_lr) * (1 - progress) ** power`` with ``progress`` going from 0
    to 1 over the remaining steps (``end_lr`` after ``total_steps``). ``power=1`` is
    LAMB's BERT recipe, ``power=2`` the LARS recipe's.

    Parameters
    ----------
    total_steps : int
        Optimizer steps of the whole run (``epochs * steps per epoch``; > ``warmup_steps``).
    end_lr : float
        Final rate (>= 0).
    power : float
        Decay exponent (> 0).
    warmup_steps : int
        Optimizer steps of linear warmup (>= 0).
    base_lr : float, optional
        Peak rate; default the optimizer's (see :class:`LRSchedule`).
    """

    per_step = True

    def __init__(self, total_steps, end_lr=0.0, power=1.0, warmup_steps=0, base_lr=None):
        super().__init__(base_lr)
        polynomial_decay(0, total_steps, 1.0, end_lr, power, warmup_steps)  # checks them
        self.total_steps = int(total_steps)
        self.end_lr = float(end_lr)
        self.power = float(power)
        self.warmup_steps = int(warmup_steps)

    def lr_at(self, index, base_lr):
        return polynomial_decay(index, self.total_steps, base_lr, self.end_lr, self.power,
                                self.warmup_steps)


# ---------------------------------------------------------------------------------- logging

class HistoryLogger(Callback):
    """Write each epoch's metrics to a CSV or JSON file as training goes.

    Parameters
    ----------
    path : str
        ``.csv`` -> one row per epoch (header first); ``.json`` -> a list of per-epoch
        records, rewritten atomically after every epoch.
    format : {"csv", "json"} or None
        Default: from the file extension (CSV unless it ends in ``.json``).
    append : bool
        Keep the records already in the file (for resumed runs); default False
        (start a new file at the beginning of ``fit``).
    """

    def __init__(self, path, format=None, append=False):
        self.path = os.fspath(path)
        if format is None:
            format = "json" if self.path.lower().endswith(".json") else "csv"
        if format not in ("csv", "json"):
            raise ConfigurationError(f"HistoryLogger: format must be 'csv' or 'json', got "
                                     f"{format!r}")
        self.format = format
        self.append = bool(append)
        self._records = []
        self._columns = None

    def on_train_begin(self, run):
        self._records = []
        self._columns = None
        if self.append and os.path.exists(self.path):
            if self.format == "json":
                with open(self.path, encoding="utf-8") as fh:
                    self._records = list(json.load(fh))
            else:
                with open(self.path, newline="", encoding="utf-8") as fh:
                    header = next(csv.reader(fh), None)
                self._columns = header
        elif self.format == "csv" and os.path.exists(self.path) and _is_main():
            os.remove(self.path)

    def on_epoch_end(self, run, epoch, logs):
        record = {"epoch": epoch, **{k: float(v) for k, v in logs.items()}}
        if not _is_main():
            return
        if self.format == "json":
            self._records.append(record)
            records = self._records
            write_atomic(self.path, lambda fh: json.dump(records, fh, indent=1, allow_nan=True),
                         binary=False)
            return
        new_file = self._columns is None
        if new_file:
            self._columns = list(record)
        with open(self.path, "a", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=self._columns, extrasaction="ignore",
                                    restval="")
            if new_file:
                writer.writeheader()
            writer.writerow(record)


class CSVLogger(HistoryLogger):
    """:class:`HistoryLogger` writing CSV."""

    def __init__(self, path, append=False):
        super().__init__(path, "csv", append)


class JSONLogger(HistoryLogger):
    """:class:`HistoryLogger` writing JSON."""

    def __init__(self, path, append=False):
        super().__init__(path, "json", append)
