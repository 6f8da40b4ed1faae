"""Mixed-precision helpers: the precision policy names and a dynamic loss scaler.

:class:`LossScaler` is PyTorch's ``GradScaler`` state machine on dualnn's backends: the
loss gradient is multiplied by a large scale before backward so small float16 gradients
do not flush to zero; the optimizer's fused update kernels divide the gradients back and
skip a step whose gradients were not finite, on a flag in device memory;
:meth:`LossScaler.update` halves the scale after an overflow and doubles it after
``growth_interval`` clean steps, on the device too. On a GPU a scaled step reads nothing
back to the host.
"""

from __future__ import annotations

import math
import numbers
from typing import ClassVar, NamedTuple

import numpy as np

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


class GradScaling(NamedTuple):
    """What :meth:`LossScaler.step` hands an optimizer's update kernels (device arrays).

    Attributes
    ----------
    inv_scale : array (1,) of the parameters' dtype, or None
        ``1 / scale``; None when the gradients were already unscaled in place.
    found_inf : int32 array (1,)
        Nonzero when a gradient of this step is NaN or inf: the update changes nothing.
    skipped : int32 array (1,)
        The optimizer's :meth:`~dualnn.optim.Optimizer.skip_counter`.
    """

    inv_scale: object
    found_inf: object
    skipped: object


class LossScaler:
    """Dynamic loss scaling, as ``torch.amp.GradScaler``, with no host read per step.

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
    read_flag : bool or None, default None
        Read the overflow flag on the host every step and skip the optimizer call there
        (PyTorch's way). ``None``: only on the CPU backend, where a read is free and the
        result exact. On a device the flag stays there (see Notes).

    Notes
    -----
    The scale, ``1 / scale``, the growth tracker (clean steps in a row) and the overflow
    flag are 1-element arrays on the parameters' backend, created at first use.
    :meth:`step` runs the finite check (one launch over the optimizer's flat gradient
    on the GPU) into the flag, then the optimizer's fused update, which multiplies each
    gradient by ``1 / scale`` before weight decay or trust ratios and changes nothing
    (parameters, moments, the step used for Adam's bias correction) when the flag is
    set. :meth:`update` is one tiny kernel. Nothing is read back: :meth:`get_scale`,
    :meth:`state_dict` and :meth:`step`'s return value on the CPU are the reads.

    The cost of not reading is a bounded lag in the host's step count: the host counts
    every step in ``state["step"]``, and the optimizer's device
    :meth:`~dualnn.optim.Optimizer.skip_counter` counts the skipped ones, which the
    kernels subtract (so bias corrections are exact). ``fit`` folds that counter into
    the host counts (:meth:`~dualnn.optim.Optimizer.sync_skipped`) at every log interval
    and epoch end, together with its loss read; a per-step learning-rate schedule
    therefore sees ``host steps - skips known so far``, which runs ahead of the true
    count by the skips of at most one log interval (``log_interval`` steps). Checkpoints
    fold first and are exact. On the CPU the flag is read every step, so it is exact.
    LARS's kernels take the flag but not the scale: the gradients are unscaled in place
    first (one more pass, still no read). LAMB's kernels take ``1 / scale``, the flag and
    the skip count like Adam's (trust ratios and weight decay see unscaled gradients):
    no read either.
    """

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5,
                 growth_interval=2000, enabled=True, read_flag=None):
        self.enabled = bool(enabled)
        self._host_scale = _check_positive("init_scale", init_scale)
        self.growth_factor = _check_positive("growth_factor", growth_factor, above_one=True)
        self.backoff_factor = _check_positive("backoff_factor", backoff_factor,
                                              below_one=True)
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, numbers.Integral) \
                or growth_interval < 1:
            raise ConfigurationError(
                f"LossScaler: growth_interval must be an integer >= 1, got {growth_interval!r}")
        self.growth_interval = int(growth_interval)
        if read_flag not in (None, True, False):
            raise ConfigurationError(f"LossScaler: read_flag must be None, True or False, got "
                                     f"{read_flag!r}")
        self.read_flag = read_flag
        self._host_tracker = 0
        self._backend = None
        self._arrays = None
        self._reset_step()

    def _reset_step(self, clear_flag=False):
        self._unscaled = False
        self._checked = set()       # ids of the optimizers / parameter lists checked
        self._stepped = []          # optimizers stepped on the device flag
        self._stepped_found_inf = None
        if clear_flag and self._arrays is not None:
            self._arrays["found"][...] = 0

    # ------------------------------------------------------------------ device state
    def _bind(self, backend, dtype):
        """Create (or move) the device state on ``backend`` in ``dtype``."""
        dtype = "float64" if str(dtype) == "float64" else "float32"
        if self._backend is backend and self._dtype == dtype:
            return self._arrays
        if self._arrays is not None:  # moved: a rare, documented read
            self._host_scale, self._host_tracker = self._read_state()
        scale = np.array([self._host_scale], dtype=dtype)
        self._arrays = {
            "scale": backend.asarray(scale, dtype),
            "inv_scale": backend.asarray(1.0 / scale, dtype),
            "tracker": backend.asarray(np.array([self._host_tracker], np.int32), "int32"),
            "found": backend.zeros((1,), "int32")}
        self._backend, self._dtype = backend, dtype
        return self._arrays

    def _reads_flag(self):
        if self.read_flag is not None:
            return self.read_flag
        return getattr(self._backend, "device", "cpu") == "cpu"

    def _read_state(self):
        b, a = self._backend, self._arrays
        return float(b.item(a["scale"])), int(b.item(a["tracker"]))

    @property
    def found_inf(self):
        """The device overflow flag (int32 array (1,)) once a check ran this step, else None."""
        if self._arrays is None or not self._checked:
            return None
        return self._arrays["found"]

    @property
    def _growth_tracker(self):
        return self._read_state()[1] if self._arrays is not None else self._host_tracker

    @property
    def scale_value(self):
        """The current scale (a float; a device read)."""
        return self._read_state()[0] if self._arrays is not None else self._host_scale

    def get_scale(self):
        """The current scale (1.0 when disabled). Reads it from the device: for logs and
        checkpoints, not for every step."""
        return self.scale_value if self.enabled else 1.0

    # ------------------------------------------------------------------ the step
    def scale(self, value, out=None):
        """``value * scale``: a loss, or the initial gradient passed to ``backward``.

        Parameters
        ----------
        value : array or float
            A device array is multiplied on the device (no read); a Python number by
            :meth:`get_scale` (a read).
        out : array, optional
            Written in place (may be ``value``): no allocation.
        """
        if not self.enabled:
            return value
        if isinstance(value, numbers.Number):
            return value * self.get_scale()
        from .device import backend_of

        backend = backend_of(value, "LossScaler.scale")
        dtype = str(value.dtype)
        arrays = self._bind(backend, dtype if self._arrays is None else self._dtype)
        xp = backend.xp
        factor = xp.reshape(arrays["scale"], ())
        if str(factor.dtype) != dtype:
            factor = xp.astype(factor, value.dtype)
        if out is not None:
            return xp.multiply(value, factor, out=out)
        return value * factor

    @staticmethod
    def _grads(optimizer):
        flat = optimizer._flat_parameters()
        if flat is not None:
            return [flat.grad]  # one launch over every gradient
        return [p.grad for p in optimizer.params]

    def unscale_(self, parameters):
        """Divide every gradient by the scale in place; record non-finite values on device.

        Parameters
        ----------
        parameters : iterable of Parameter, or an Optimizer
            E.g. ``optimizer.params`` (an optimizer: its flat gradient buffer, one launch).

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
        if hasattr(parameters, "params") and hasattr(parameters, "step"):
            params, grads = parameters.params, self._grads(parameters)
        else:
            params = list(parameters)
            grads = [p.grad for p in params]
        if not params:
            return
        arrays = self._bind(params[0].backend, params[0].dtype)
        params[0].backend.grad_check_finite(grads, arrays["found"],
                                            inv_scale=arrays["inv_scale"])
        self._unscaled = True
        self._checked.add("unscaled")

    def step(self, optimizer, **kwargs):
        """Unscale and update, or do nothing when a gradient is not finite.

        Returns
        -------
        bool or None
            Whether the optimizer stepped when the flag is read on the host (the CPU, or
            an optimizer without scaled kernels); None when it stays on the device.
        """
        if not self.enabled:
            optimizer.step(**kwargs)
            return True
        backend = optimizer.params[0].backend
        arrays = self._bind(backend, optimizer.params[0].dtype)
        in_kernel = (getattr(optimizer, "scaled_update", False)
                     and getattr(optimizer, "unscales_in_kernel", True)
                     and not self._reads_flag() and not optimizer.hooks
                     and not self._unscaled)
        if "unscaled" not in self._checked and id(optimizer) not in self._checked:
            if in_kernel:  # the check only: the update kernels unscale
                backend.grad_check_finite(self._grads(optimizer), arrays["found"])
            else:
                self.unscale_(optimizer)
            self._checked.add(id(optimizer))
        if self._reads_flag() or not getattr(optimizer, "scaled_update", False):
            found = bool(backend.item(arrays["found"]))
            self._stepped_found_inf = found
            if not found:
                optimizer.step(**kwargs)
            return not found
        kwargs.pop("check_finite", None)  # the flag handles non-finite gradients
        optimizer.step(grad_scaling=GradScaling(
            arrays["inv_scale"] if in_kernel and not self._unscaled else None,
            arrays["found"], optimizer.skip_counter()), **kwargs)
        self._stepped.append(optimizer)
        return None

    def update(self, new_scale=None):
        """Adjust the scale after a step and start the next one, on the device.

        Halves (``backoff_factor``) after a non-finite step and resets the count of clean
        steps; after ``growth_interval`` clean steps in a row, doubles (``growth_factor``).
        ``new_scale`` sets the scale explicitly instead. Optimizers stepped on the
        device flag count a skipped step in their :meth:`~dualnn.optim.Optimizer.
        skip_counter`.
        """
        if not self.enabled:
            return
        if new_scale is not None:
            new_scale = _check_positive("new_scale", new_scale)
        arrays = self._arrays
        if arrays is None:
            if new_scale is not None:
                self._host_scale = new_scale
            self._reset_step()
            return
        backend, xp = self._backend, self._backend.xp
        counters = [o.skip_counter() for o in self._stepped]
        if new_scale is not None:
            found = xp.astype(arrays["found"] != 0, xp.int32)
            for c in counters:
                c[...] = c + found
            arrays["scale"][...] = new_scale
            arrays["inv_scale"][...] = 1.0 / new_scale
            arrays["found"][...] = 0
        elif self._checked:
            backend.loss_scale_update(
                arrays["scale"], arrays["inv_scale"], arrays["tracker"], arrays["found"],
                growth_factor=self.growth_factor, backoff_factor=self.backoff_factor,
                growth_interval=self.growth_interval, counters=counters)
        self._reset_step()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self):
        """``{"scale", "growth_factor", "backoff_factor", "growth_interval", "growth_tracker"}``
        (reads the scale and the tracker from the device)."""
        if not self.enabled:
            return {}
        scale, tracker = (self._read_state() if self._arrays is not None
                          else (self._host_scale, self._host_tracker))
        return {"scale": scale, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval,
                "growth_tracker": tracker}

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
        self._host_scale = checked._host_scale
        self.growth_factor = checked.growth_factor
        self.backoff_factor = checked.backoff_factor
        self.growth_interval = checked.growth_interval
        self._host_tracker = int(tracker)
        if self._arrays is not None:
            a = self._arrays
            a["scale"][...] = self._host_scale
            a["inv_scale"][...] = 1.0 / self._host_scale
            a["tracker"][...] = self._host_tracker
        self._reset_step(clear_flag=True)

    def __repr__(self):
        scale, tracker = (self._read_state() if self._arrays is not None
                          else (self._host_scale, self._host_tracker))
        return f"LossScaler(scale={scale!r}, growth_tracker={tracker}, enabled={self.enabled})"


class PerformanceWarning(UserWarning):
    """A requested mode works on this device but runs slower than the default (e.g. mixed
    precision on the CPU, which rounds to 16 bits while computing in float32)."""
