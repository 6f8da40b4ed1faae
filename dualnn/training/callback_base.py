"""The callback protocol of :func:`dualnn.fit`: :class:`Callback`, :class:`CallbackList`
and the optimizer-step count per-step hooks receive (users import these from
:mod:`dualnn.callbacks`)."""

from __future__ import annotations

import sys

from ..errors import ConfigurationError

__all__ = ["Callback", "CallbackList", "optimizer_steps"]


def optimizer_steps(optimizer):
    """How many updates ``optimizer`` has applied (its parameters' ``state["step"]``).

    Counted by the optimizer, so it survives checkpoints (the state is saved) and does not
    move when a step is skipped (a :class:`~dualnn.precision.LossScaler` overflow) or when
    a micro-batch only accumulates gradients. On a GPU a skip is counted on the device and
    subtracted when ``fit`` reads it (every ``log_interval`` steps and at each epoch's
    end): until then the count includes it.
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
