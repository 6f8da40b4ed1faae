"""What :func:`~dualnn.training.fit` returns (:class:`History`) and what callbacks see of a
running fit (:class:`TrainingRun`)."""

from __future__ import annotations

import math

__all__ = ["History", "TrainingRun"]


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
    stopped : dict or None
        None when training ran to its end (or stopped early by a callback). Otherwise
        where and why it stopped: ``{"epoch": e, "step": s, "reason": r}``, the model,
        optimizer and batch-norm statistics being those after step ``s`` of epoch ``e``
        (``s`` completed steps; epoch ``e`` is in :attr:`epoch` only if it completed).
        ``reason`` is ``"interrupted"`` (Ctrl-C: ``fit`` returns this History) or
        ``"<ExceptionType>: <message>"`` (``fit`` raised; the exception carries this
        History as ``exc.history``).
    """

    def __init__(self):
        self.epoch = []
        self.history = {}
        self.stopped_early = False
        self.stopped = None

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

    def plot(self, path=None, metrics=None):
        """Draw the training curves (:func:`dualnn.plotting.plot_history`).

        Parameters
        ----------
        path : str or os.PathLike, optional
            Save the figure there (format from the extension, e.g. ``.png``).
        metrics : list of str, optional
            Default ``"loss"`` and ``"accuracy"`` (each with its ``val_`` curve).

        Returns
        -------
        matplotlib.figure.Figure
        """
        from ..plotting import plot_history

        return plot_history(self, path, metrics)

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
    step : int
        Steps completed in the current epoch.
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
        self.step = 0
        self.stop_training = False
