"""The :class:`Optimizer` base class: parameters, options, step, state and checkpoints.

An optimizer holds an ordered list of :class:`~dualnn.parameter.Parameter` and a few
hyperparameters. Its per-parameter state (moments, step count) lives in ``p.state``, not
in the optimizer, so ``model.to(device)`` moves it with the parameter. Updates go through
the parameter's backend (``p.backend.adam_update(...)`` etc.), which runs a fused kernel
where it has one and the reference math otherwise; nothing here touches an array library
directly.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

from ..backend.base import dtype_name
from ..errors import ConfigurationError, NonFiniteError, ShapeError
from ..parameter import Parameter
from . import constraints

_REGISTRY = {}


def get(name):
    """The optimizer class called ``name`` (case-insensitive), e.g. ``get("adamw")``.

    Used by the command line and by checkpoints to rebuild an optimizer from its saved
    type. Subclasses of :class:`Optimizer` register themselves under their class name.

    Parameters
    ----------
    name : str or type
        A class name such as ``"SGD"``, ``"adam"``; an optimizer class is returned as is.

    Raises
    ------
    ConfigurationError
        If no optimizer has that name.
    """
    if isinstance(name, type) and issubclass(name, Optimizer):
        return name
    if not isinstance(name, str):
        raise ConfigurationError(f"optimizer name must be a string, got {type(name).__name__}")
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        known = sorted(cls.__name__ for cls in _REGISTRY.values())
        raise ConfigurationError(
            f"unknown optimizer {name!r}; known: {known}. A custom optimizer must be "
            "imported before it can be looked up by name") from None


# ---------------------------------------------------------------------------------------
# hyperparameter checks
# ---------------------------------------------------------------------------------------

def check_real(owner, name, value, *, low=None, low_open=False, high=None, high_open=False):
    """``value`` as a finite Python float, or a :class:`ConfigurationError` naming it.

    ``low``/``high`` bound the accepted range; ``*_open`` excludes the bound itself.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigurationError(
            f"{owner}: {name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigurationError(f"{owner}: {name} must be finite, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        rel = ">" if low_open else ">="
        raise ConfigurationError(f"{owner}: {name} must be {rel} {low}, got {value!r}")
    if high is not None and (value > high or (high_open and value == high)):
        rel = "<" if high_open else "<="
        raise ConfigurationError(f"{owner}: {name} must be {rel} {high}, got {value!r}")
    return value


def check_bool(owner, name, value):
    """``value`` as a bool; only ``True``/``False`` (or 0/1) are accepted."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise ConfigurationError(f"{owner}: {name} must be True or False, got {value!r}")


def check_params(owner, params):
    """The parameters as a list, in order; rejects empty lists, non-Parameters, duplicates."""
    if isinstance(params, Parameter):
        raise ConfigurationError(
            f"{owner}: params must be an iterable of Parameter (e.g. model.parameters()), "
            "got a single Parameter; wrap it in a list")
    if isinstance(params, Mapping):
        raise ConfigurationError(
            f"{owner}: params must be an iterable of Parameter (e.g. model.parameters()), "
            "got a mapping; parameter groups are not supported")
    try:
        params = list(params)
    except TypeError:
        raise ConfigurationError(
            f"{owner}: params must be an iterable of Parameter (e.g. model.parameters()), "
            f"got {type(params).__name__}") from None
    if not params:
        raise ConfigurationError(f"{owner}: got an empty parameter list")
    seen = {}
    for i, p in enumerate(params):
        if isinstance(p, Mapping):
            raise ConfigurationError(
                f"{owner}: params[{i}] is a mapping; parameter groups are not supported")
        if not isinstance(p, Parameter):
            raise ConfigurationError(
                f"{owner}: params[{i}] must be a dualnn Parameter, got {type(p).__name__}")
        if id(p) in seen:
            raise ConfigurationError(
                f"{owner}: parameter {p.name!r} appears more than once in the parameter "
                f"list (positions {seen[id(p)]} and {i})")
        seen[id(p)] = i
    return params


def _layer_of(name):
    """The layer prefix of a parameter name (``"0.weight"`` -> ``"0"``), else the name."""
    prefix, dot, _ = name.rpartition(".")
    return prefix if dot and prefix else name


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class Optimizer:
    """Base class of every optimizer.

    A subclass lists its constructor's hyperparameters in ``hyperparameter_names``, the
    state arrays it may keep per parameter in ``state_keys``, validates its
    hyperparameters in :meth:`check_hyperparameters`, and implements :meth:`update`
    for one parameter. The base class does the rest: the documented options (L1
    penalty, gradient-norm clipping, max-norm constraint), the non-finite guard,
    ``zero_grad``, ``state_dict``/``load_state_dict`` and ``get_config``.

    Parameters
    ----------
    params : iterable of Parameter
        The parameters to train, e.g. ``model.parameters()``; their order is kept.
    l1 : float, keyword-only
        L1 penalty: ``l1 * sign(p)`` is added to each gradient before the update.
    max_norm : float or None, keyword-only
        Max-norm constraint applied after each update: every row of a parameter with two
        or more dimensions (an output unit's incoming weights) is rescaled to an L2
        norm of at most ``max_norm``. One-dimensional parameters are untouched.
    clip_grad_norm : float or None, keyword-only
        Before the update, scale all gradients together so their global L2 norm is at
        most this (as :func:`torch.nn.utils.clip_grad_norm_`). Costs one host read per
        parameter per step.
    **hyperparameters
        The subclass's own hyperparameters.

    Attributes
    ----------
    params : list of Parameter
    lr : float
        The learning rate; may be set between steps (learning-rate schedules).

    Notes
    -----
    The options apply in this order: clip the gradients, add the L1 term, run the
    update rule (with its ``weight_decay``), apply the max-norm constraint. None of them
    modifies ``p.grad``.
    """

    hyperparameter_names = ()
    """Constructor keyword names of the subclass's own hyperparameters (``lr`` first)."""

    option_names = ("l1", "max_norm", "clip_grad_norm")
    """Keyword-only options every optimizer accepts."""

    state_keys = ()
    """Names of the per-parameter state arrays the subclass may create."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY.setdefault(cls.__name__.lower(), cls)

    def __init__(self, params, **config):
        owner = type(self).__name__
        self.params = check_params(owner, params)
        self._apply_config(self._check_config(config))

    # ------------------------------------------------------------------ configuration
    def check_hyperparameters(self, hyper):
        """Validate the subclass's hyperparameters; return them normalized (floats, bools).

        Subclasses override this. Raises :class:`ConfigurationError` naming the value.
        """
        return dict(hyper)

    def _check_config(self, config):
        """The full constructor config checked and normalized, or ConfigurationError."""
        owner = type(self).__name__
        known = set(self.hyperparameter_names) | set(self.option_names)
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigurationError(
                f"{owner}: unknown hyperparameter(s) {unknown}; expected some of "
                f"{list(self.hyperparameter_names) + list(self.option_names)}")
        defaults = self.get_config() if hasattr(self, "_lr") else {}
        merged = {**defaults, **config}
        missing = [n for n in known if n not in merged]
        if missing:
            raise ConfigurationError(f"{owner}: missing hyperparameter(s) {sorted(missing)}")
        hyper = self.check_hyperparameters(
            {n: merged[n] for n in self.hyperparameter_names})
        l1 = check_real(owner, "l1", merged["l1"], low=0.0)
        max_norm = merged["max_norm"]
        if max_norm is not None:
            max_norm = check_real(owner, "max_norm", max_norm, low=0.0, low_open=True)
        clip = merged["clip_grad_norm"]
        if clip is not None:
            clip = check_real(owner, "clip_grad_norm", clip, low=0.0, low_open=True)
        return {**hyper, "l1": l1, "max_norm": max_norm, "clip_grad_norm": clip}

    def _apply_config(self, config):
        for name, value in config.items():
            setattr(self, name, value)

    @property
    def lr(self):
        """The learning rate (a non-negative float); settable between steps."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = check_real(type(self).__name__, "lr", value, low=0.0)

    def get_config(self):
        """The constructor keyword arguments, JSON-serializable.

        ``type(opt)(params, **opt.get_config())`` rebuilds an equivalent optimizer (with
        fresh state; restore the state with :meth:`load_state_dict`).
        """
        config = {}
        for name in self.hyperparameter_names + self.option_names:
            value = getattr(self, name)
            config[name] = list(value) if isinstance(value, tuple) else value
        return config

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({len(self.params)} parameters, {args})"

    # ------------------------------------------------------------------ stepping
    def zero_grad(self):
        """Set every parameter's gradient to zero, in place."""
        for p in self.params:
            p.zero_grad()

    def step(self, check_finite=False):
        """Update every parameter in place from its gradient.

        Parameters
        ----------
        check_finite : bool
            First check that every gradient is finite (one host read per parameter);
            if one is not, raise before anything changes.

        Raises
        ------
        NonFiniteError
            With ``check_finite=True``, when a gradient holds NaN or inf; ``.layer`` is
            the layer prefix of the first such parameter's name. Parameters and state are
            left unchanged.
        """
        if check_finite:
            for p in self.params:
                if not p.backend.all_finite(p.grad):
                    raise NonFiniteError(
                        f"{type(self).__name__}: non-finite gradient of {p.name} "
                        f"(shape {p.shape}, {p.dtype}); parameters and optimizer state "
                        "were not updated", layer=_layer_of(p.name))
        grads = [p.grad for p in self.params]
        if self.clip_grad_norm is not None:
            coef = constraints.clip_coefficient(
                constraints.global_grad_norm(self.params, grads), self.clip_grad_norm)
            if coef < 1.0:
                grads = [g * coef for g in grads]
        for p, grad in zip(self.params, grads):
            if self.l1 != 0:
                grad = constraints.add_l1(p, grad, self.l1)
            state = p.state
            state["step"] = int(state.get("step", 0)) + 1
            self.update(p, grad, state)
            if self.max_norm is not None:
                constraints.apply_max_norm(p, self.max_norm)

    def update(self, p, grad, state):
        """Apply the update rule to one parameter, in place.

        Parameters
        ----------
        p : Parameter
        grad : array
            The gradient to use (``p.grad``, or a clipped / L1-augmented copy).
        state : dict
            ``p.state``; ``state["step"]`` already counts this update (from 1).
        """
        raise NotImplementedError

    @staticmethod
    def zeros_state(p):
        """A zero array shaped and typed like ``p.data``, on its backend."""
        return p.backend.zeros_like(p.data)

    @classmethod
    def state_buffer(cls, state, p, key):
        """``state[key]``, created as zeros like ``p.data`` on first use."""
        buffer = state.get(key)
        if buffer is None:
            buffer = state[key] = cls.zeros_state(p)
        return buffer

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self):
        """Hyperparameters and per-parameter state, as host data.

        Returns
        -------
        dict
            ``{"type": class name, "hyperparameters": get_config(),
            "state": {index: {key: host NumPy array or int}}}`` with one entry per
            parameter, by position in :attr:`params` (empty before the first step).
            Arrays are copies: later steps do not change them.
        """
        state = {}
        for i, p in enumerate(self.params):
            entry = {}
            for key, value in p.state.items():
                if key == "step":
                    entry[key] = int(value)
                elif key in self.state_keys:
                    host = p.backend.to_host(value)
                    entry[key] = host.copy() if host is value else host
            state[i] = entry
        return {"type": type(self).__name__, "hyperparameters": self.get_config(),
                "state": state}

    def load_state_dict(self, state_dict):
        """Restore hyperparameters and per-parameter state from :meth:`state_dict` output.

        Everything is checked before anything changes: the type, the hyperparameters,
        the number of parameters, each state entry's keys, shapes and dtypes.

        Raises
        ------
        ConfigurationError
            Wrong type, bad hyperparameters, wrong parameter count or unknown state keys.
        ShapeError
            A state array's shape or dtype differs from its parameter's.
        """
        owner = type(self).__name__
        if not isinstance(state_dict, Mapping):
            raise ConfigurationError(
                f"{owner}.load_state_dict: expected a dict, got {type(state_dict).__name__}")
        missing = [k for k in ("type", "hyperparameters", "state") if k not in state_dict]
        if missing:
            raise ConfigurationError(
                f"{owner}.load_state_dict: the state dict lacks {missing}")
        if state_dict["type"] != owner:
            raise ConfigurationError(
                f"{owner}.load_state_dict: the state dict is of a {state_dict['type']!r} "
                f"optimizer, not {owner!r}")
        hyper = state_dict["hyperparameters"]
        if not isinstance(hyper, Mapping):
            raise ConfigurationError(f"{owner}.load_state_dict: hyperparameters must be a dict")
        config = self._check_config(dict(hyper))
        entries = self._check_state(state_dict["state"])
        # Everything is valid: now change things.
        self._apply_config(config)
        for p, entry in zip(self.params, entries):
            new_state = {}
            for key, value in entry.items():
                if key == "step":
                    new_state[key] = int(value)
                else:
                    new_state[key] = p.backend.store(value, dtype=p.dtype)
            p.state = new_state

    def _check_state(self, state):
        """The state entries as a list in parameter order, after checking them all."""
        owner = type(self).__name__
        if not isinstance(state, Mapping):
            raise ConfigurationError(f"{owner}.load_state_dict: state must be a dict")
        by_index = {}
        for key, entry in state.items():
            try:
                index = int(key)
            except (TypeError, ValueError):
                raise ConfigurationError(
                    f"{owner}.load_state_dict: state keys must be parameter indices, "
                    f"got {key!r}") from None
            by_index[index] = entry
        n = len(self.params)
        if sorted(by_index) != list(range(n)):
            raise ConfigurationError(
                f"{owner}.load_state_dict: the state dict holds state for {len(by_index)} "
                f"parameter(s) (indices {sorted(by_index)}), this optimizer has {n}")
        entries = []
        allowed = set(self.state_keys) | {"step"}
        for i, p in enumerate(self.params):
            entry = by_index[i]
            where = f"{owner}.load_state_dict: parameter {i} ({p.name})"
            if not isinstance(entry, Mapping):
                raise ConfigurationError(f"{where}: state must be a dict")
            unknown = sorted(set(entry) - allowed)
            if unknown:
                raise ConfigurationError(
                    f"{where}: unknown state key(s) {unknown}; {owner} keeps {sorted(allowed)}")
            for key, value in entry.items():
                if key == "step":
                    if not _is_int(value) or value < 0:
                        raise ConfigurationError(
                            f"{where}: step must be a non-negative int, got {value!r}")
                    continue
                shape = getattr(value, "shape", None)
                dtype = getattr(value, "dtype", None)
                if shape is None or dtype is None:
                    raise ConfigurationError(
                        f"{where}: state {key!r} must be an array, got {type(value).__name__}")
                if tuple(shape) != p.shape:
                    raise ShapeError(
                        f"{where}: state {key!r} has shape {tuple(shape)}, expected {p.shape}")
                dtype = dtype_name(dtype)
                if dtype != p.dtype:
                    raise ShapeError(
                        f"{where}: state {key!r} has dtype {dtype}, expected {p.dtype}")
            entries.append(entry)
        return entries
