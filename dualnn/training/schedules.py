"""Learning-rate schedules for :func:`dualnn.fit`, as callbacks.

Per epoch (:class:`StepLR`, :class:`ExponentialLR`, :class:`CosineAnnealingLR`,
``LinearWarmup(warmup_epochs=...)``) or per *optimizer step* (:class:`PolynomialDecay`,
``LinearWarmup(warmup_steps=...)``). Step counts come from the optimizer itself
(:func:`~dualnn.callbacks.optimizer_steps`): they survive a resume and never count
micro-batches or steps a loss scaler skipped. On a GPU a skip is known only on the device
until ``fit`` reads its count (with the loss, every ``log_interval`` steps and at each
epoch's end): until then a per-step schedule counts the skipped step too, a lag of at most
one log interval's skips (see :class:`~dualnn.precision.LossScaler`). On the CPU the count
is exact at every step.
"""

from __future__ import annotations

import math
import numbers

from ..errors import ConfigurationError
from ..optim.scaling import polynomial_decay
from .callback_base import Callback, optimizer_steps

__all__ = ["CosineAnnealingLR", "ExponentialLR", "LRSchedule", "LinearWarmup",
           "PolynomialDecay", "StepLR"]


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
