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
import os

from ..errors import ConfigurationError
from .atomic import write_atomic
from .callback_base import Callback, CallbackList, _is_main, optimizer_steps
from .schedules import (
    CosineAnnealingLR,
    ExponentialLR,
    LinearWarmup,
    LRSchedule,
    PolynomialDecay,
    StepLR,
)

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

