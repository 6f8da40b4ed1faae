"""Mixed-precision helpers: the precision policy names and a dynamic loss scaler.

:class:`LossScaler` is PyTorch's ``GradScaler`` state machine on dualnn's backends: the
loss gradient is multiplied by a large scale before backward so small float16 gradients
do not flush to zero; :meth:`LossScaler.unscale_` divides the gradients back and records,
as a device array, whether any was non-finite; :meth:`LossScaler.step` skips the update
of a step that overflowed, and :meth:`LossScaler.update` halves the scale after an
overflow and doubles it after ``growth_interval`` clean steps.
"""

from __future__ import annotations

import math
import numbers
from typing import ClassVar

from .errors import ConfigurationError

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


class Precision:
    """A precision policy parsed from its name.

    Parameters
    ----------
    name : {"float32", "mixed_float16", "mixed_bfloat16"} or Precision

    Attributes
    ----------
    name : str
    compute_dtype : str
        Dtype of activations and of the forward/backward math (``"float16"``...).
    param_dtype : str
        Dtype of the master parameters, gradients and optimizer state (``"float32"``).
    loss_scaling : bool
        Whether training needs a :class:`LossScaler` (float16's narrow exponent range;
        bfloat16 has float32's).

    Raises
    ------
    ConfigurationError
        For any other name.
    """

    _ITEMSIZE: ClassVar[dict] = {"float32": 4, "float16": 2, "bfloat16": 2}

    def __init__(self, name="float32"):
        if isinstance(name, Precision):
            name = name.name
        if name not in PRECISIONS:
            raise ConfigurationError(
                f"precision must be one of {PRECISIONS}, got {name!r}")
        self.name = name
        self.compute_dtype = "float32" if name == "float32" else name.split("_", 1)[1]
        self.param_dtype = "float32"
        self.loss_scaling = name == "mixed_float16"

    @property
    def compute_itemsize(self):
        """Bytes per activation element."""
        return self._ITEMSIZE[self.compute_dtype]

    @property
    def param_itemsize(self):
        """Bytes per parameter, gradient or optimizer-state element."""
        return self._ITEMSIZE[self.param_dtype]

    def __eq__(self, other):
        return isinstance(other, Precision) and other.name == self.name

    def __hash__(self):
        return hash(self.name)

    def __repr__(self):
        return f"Precision({self.name!r})"


def _check_positive(name, value, *, above_one=False, below_one=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"LossScaler: {name} must be a finite number > 0, got "
                                 f"{value!r}")
    if above_one and value <= 1:
        raise ConfigurationError(f"LossScaler: {name} must be > 1, got {value!r}")
    if below_one and value >= 1:
        raise ConfigurationError(f"LossScaler: {name} must be < 1, got {value!r}")
    return float(value)


class LossScaler:
    """Dynamic loss scaling, as ``torch.amp.GradScaler``.

    A training step with a scaler::

        dy = scaler.scale(loss_fn.backward())   # the initial gradient, times the scale
        model.backward(dy)
        scaler.unscale_(optimizer.params)       # optional: before clipping gradients
        scaler.step(optimizer)                  # skipped when a gradient is not finite
        scaler.update()

    Parameters
    ----------
    init_scale : float, default 2**16
    growth_factor : float, default 2.0
        Multiplies the scale after ``growth_interval`` consecutive clean steps (> 1).
    backoff_factor : float, default 0.5
        Multiplies the scale after a step with a non-finite gradient (in (0, 1)).
    growth_interval : int, default 2000
        Clean steps before the scale grows (>= 1).
    enabled : bool, default True
        ``False`` makes every method a pass-through (float32 or bfloat16 training).

    Notes
    -----
    :meth:`unscale_` never reads a device value: the found-inf flag is a device array
    (:attr:`found_inf`). :meth:`step` reads it once, as PyTorch's ``GradScaler.step``
    does, because skipping the optimizer is a host decision; :meth:`update` then uses
    that value. The scale itself is a Python float (the host owns the schedule).
    """

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5,
                 growth_interval=2000, enabled=True):
        self.enabled = bool(enabled)
        self._scale = _check_positive("init_scale", init_scale)
        self.growth_factor = _check_positive("growth_factor", growth_factor, above_one=True)
        self.backoff_factor = _check_positive("backoff_factor", backoff_factor,
                                              below_one=True)
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, numbers.Integral) \
                or growth_interval < 1:
            raise ConfigurationError(
                f"LossScaler: growth_interval must be an integer >= 1, got {growth_interval!r}")
        self.growth_interval = int(growth_interval)
        self._growth_tracker = 0
        self._reset_step()

    def _reset_step(self):
        self.found_inf = None
        """Device array (0-d bool) set by :meth:`unscale_`: a gradient was not finite."""
        self._unscaled = False
        self._stepped_found_inf = None

    # ------------------------------------------------------------------ the step
    @property
    def scale_value(self):
        """The current scale (a float)."""
        return self._scale

    def get_scale(self):
        """The current scale (1.0 when disabled)."""
        return self._scale if self.enabled else 1.0

    def scale(self, value):
        """``value * scale``: a loss, or the initial gradient passed to ``backward``."""
        if not self.enabled:
            return value
        return value * self._scale

    def unscale_(self, parameters):
        """Divide every gradient by the scale in place; record non-finite values on device.

        Parameters
        ----------
        parameters : iterable of Parameter
            E.g. ``optimizer.params``.

        Raises
        ------
        ConfigurationError
            When called twice before :meth:`update`.
        """
        if not self.enabled:
            return
        if self._unscaled:
            raise ConfigurationError(
                "LossScaler.unscale_ was already called since the last update()")
        inv = 1.0 / self._scale
        found = None
        for p in parameters:
            backend, grad = p.backend, p.grad
            xp = backend.xp
            bad = xp.logical_not(xp.all(xp.isfinite(grad)))
            found = bad if found is None else xp.logical_or(found, bad)
            grad[...] = grad * inv
        self.found_inf = None if found is None else backend.xp.asarray(found)
        self._flag_backend = backend if found is not None else None
        self._unscaled = True

    def step(self, optimizer, **kwargs):
        """Unscale (if not done yet), then ``optimizer.step(**kwargs)`` unless non-finite.

        Returns
        -------
        bool
            Whether the optimizer stepped.
        """
        if not self.enabled:
            optimizer.step(**kwargs)
            return True
        if not self._unscaled:
            self.unscale_(optimizer.params)
        found = False
        if self.found_inf is not None:
            found = bool(self._flag_backend.item(self.found_inf))
        self._stepped_found_inf = found
        if not found:
            optimizer.step(**kwargs)
        return not found

    def update(self, new_scale=None):
        """Adjust the scale after a step and start the next one.

        Halves (``backoff_factor``) after a non-finite step and resets the count of clean
        steps; after ``growth_interval`` clean steps in a row, doubles (``growth_factor``).
        ``new_scale`` sets the scale explicitly instead.
        """
        if not self.enabled:
            return
        if new_scale is not None:
            self._scale = _check_positive("new_scale", new_scale)
        else:
            found = self._stepped_found_inf
            if found is None and self.found_inf is not None:
                found = bool(self._flag_backend.item(self.found_inf))
            if found:
                self._scale *= self.backoff_factor
                self._growth_tracker = 0
            elif found is not None:
                self._growth_tracker += 1
                if self._growth_tracker == self.growth_interval:
                    self._scale *= self.growth_factor
                    self._growth_tracker = 0
        self._reset_step()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self):
        """``{"scale", "growth_factor", "backoff_factor", "growth_interval", "growth_tracker"}``."""
        if not self.enabled:
            return {}
        return {"scale": self._scale, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval,
                "growth_tracker": self._growth_tracker}

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` output (checked before anything changes)."""
        if not self.enabled:
            return
        missing = {"scale", "growth_factor", "backoff_factor", "growth_interval",
                   "growth_tracker"} - set(state)
        if missing:
            raise ConfigurationError(f"LossScaler.load_state_dict: missing {sorted(missing)}")
        checked = LossScaler(state["scale"], state["growth_factor"], state["backoff_factor"],
                             state["growth_interval"])
        tracker = state["growth_tracker"]
        if isinstance(tracker, bool) or not isinstance(tracker, numbers.Integral) \
                or not 0 <= tracker < checked.growth_interval:
            raise ConfigurationError(
                f"LossScaler.load_state_dict: growth_tracker must be an integer in "
                f"[0, {checked.growth_interval}), got {tracker!r}")
        self._scale = checked._scale
        self.growth_factor = checked.growth_factor
        self.backoff_factor = checked.backoff_factor
        self.growth_interval = checked.growth_interval
        self._growth_tracker = int(tracker)
        self._reset_step()

    def __repr__(self):
        return (f"LossScaler(scale={self._scale!r}, growth_tracker={self._growth_tracker}, "
                f"enabled={self.enabled})")


class PerformanceWarning(UserWarning):
    """A requested mode works on this device but runs slower than the default (e.g. mixed
    precision on the CPU, which rounds to 16 bits while computing in float32)."""
