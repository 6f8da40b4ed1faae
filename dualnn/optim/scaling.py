"""Learning-rate rules for large batches: batch-size scaling and polynomial decay with warmup."""

from __future__ import annotations

import math
import numbers

from ..errors import ConfigurationError

SCALING_RULES = ("linear", "sqrt")


def _positive_int(owner, name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigurationError(
            f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _real(owner, name, value, low=0.0):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value < low:
        raise ConfigurationError(f"{owner}: {name} must be a finite number >= {low}, "
                                 f"got {value!r}")
    return float(value)


def scale_lr(lr, batch_size, base_batch_size=256, rule="linear"):
    """The learning rate for ``batch_size`` given one tuned at ``base_batch_size``.

    ``"linear"`` (Goyal et al. 2017, for SGD): ``lr * batch_size / base_batch_size``.
    ``"sqrt"`` (Krizhevsky 2014; often better for Adam-type optimizers):
    ``lr * sqrt(batch_size / base_batch_size)``.

    Parameters
    ----------
    lr : float
        The learning rate tuned at ``base_batch_size`` (>= 0).
    batch_size, base_batch_size : int
        Positive batch sizes.
    rule : {"linear", "sqrt"}

    Returns
    -------
    float

    Raises
    ------
    ConfigurationError
        For an unknown rule or a non-positive batch size.

    Examples
    --------
    >>> scale_lr(0.1, 8192)
    3.2
    >>> scale_lr(1e-3, 1024, rule="sqrt")
    0.002
    """
    owner = "scale_lr"
    lr = _real(owner, "lr", lr)
    batch_size = _positive_int(owner, "batch_size", batch_size)
    base_batch_size = _positive_int(owner, "base_batch_size", base_batch_size)
    ratio = batch_size / base_batch_size
    if rule == "linear":
        return lr * ratio
    if rule == "sqrt":
        return lr * math.sqrt(ratio)
    raise ConfigurationError(f"scale_lr: rule must be one of {SCALING_RULES}, got {rule!r}")


def polynomial_decay(step, total_steps, base_lr, end_lr=0.0, power=1.0, warmup_steps=0):
    """The learning rate at optimizer step ``step`` (from 0): linear warmup, then decay.

    For ``step < warmup_steps``: ``base_lr * (step + 1) / warmup_steps`` (the first step
    already moves, the last warmup step reaches ``base_lr``). After it, with
    ``progress = (step - warmup_steps) / (total_steps - warmup_steps)`` clipped to
    ``[0, 1]``: ``end_lr + (base_lr - end_lr) * (1 - progress) ** power``. ``power=1``
    is linear decay (LAMB's BERT recipe), ``power=2`` the LARS recipe's.

    Parameters
    ----------
    step : int
        Optimizer steps taken so far (>= 0).
    total_steps : int
        Steps of the whole run (>= 1, > ``warmup_steps``).
    base_lr, end_lr : float
        Peak and final learning rates (>= 0).
    power : float
        Decay exponent (> 0).
    warmup_steps : int
        Steps of linear warmup (>= 0).

    Returns
    -------
    float

    Raises
    ------
    ConfigurationError
        For negative or inconsistent arguments.
    """
    owner = "polynomial_decay"
    step = _positive_int(owner, "step", step, minimum=0)
    total_steps = _positive_int(owner, "total_steps", total_steps)
    warmup_steps = _positive_int(owner, "warmup_steps", warmup_steps, minimum=0)
    base_lr = _real(owner, "base_lr", base_lr)
    end_lr = _real(owner, "end_lr", end_lr)
    power = _real(owner, "power", power)
    if power == 0:
        raise ConfigurationError(f"{owner}: power must be > 0, got {power!r}")
    if warmup_steps >= total_steps:
        raise ConfigurationError(
            f"{owner}: warmup_steps ({warmup_steps}) must be smaller than total_steps "
            f"({total_steps})")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return end_lr + (base_lr - end_lr) * (1.0 - progress) ** power
