"""The :class:`Optimizer` base class: parameters, options, step, state and checkpoints.

An optimizer holds an ordered list of :class:`~dualnn.parameter.Parameter` and a few
hyperparameters. Its per-parameter state (moments, step count) lives in ``p.state``, not
in the optimizer, so ``model.to(device)`` moves it with the parameter. Updates go through
the parameter's backend (``p.backend.adam_update(...)`` etc.), which runs a fused kernel
where it has one and the reference math otherwise; nothing here touches an array library
directly.

Why this module is long: the base class owns everything every optimizer shares —
declared hyperparameters, option hooks, per-parameter state and its checkpoint format,
the one-launch update over flat buffers on the GPU, and the device-side finite check — so
that a concrete optimizer is only its hyperparameter declaration and its update call.
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Mapping

from ..backend.base import dtype_name
from ..errors import ConfigurationError, NonFiniteError, ShapeError
from ..parameter import FlatArrays, FlatParameters, Parameter
from .hooks import OPTION_HOOKS, OPTION_OFF, OptimizerHook
from .hyperparameters import Hyperparameters, check_bool, check_real, unchecked  # noqa: F401  (check_* re-exported)

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

    A subclass declares its hyperparameters once, in ``hyperparameters`` (name ->
    ``Hyperparameter`` in constructor order, ``lr`` first; see
    :mod:`dualnn.optim.hyperparameters`), the state arrays it may keep per parameter in
    ``state_keys``, and implements :meth:`update` for one parameter; it may override
    :meth:`check_hyperparameters` for checks that involve several values. The base class
    builds the rest from the declaration: the constructor (the hyperparameters
    positionally or by keyword, with their defaults), validation, ``get_config``,
    ``state_dict``/``load_state_dict``, the non-finite guard and ``zero_grad``.

    Parameters
    ----------
    params : iterable of Parameter
        The parameters to train, e.g. ``model.parameters()``; their order is kept.
    *args, **hyperparameters
        The subclass's declared hyperparameters.
    l1 : float, keyword-only
        L1 penalty: ``l1 * sign(p)`` is added to each gradient before the update
        (installs a :class:`~dualnn.optim.hooks.L1Penalty` hook).
    max_norm : float or None, keyword-only
        Max-norm constraint applied after each update: every row of a parameter with two
        or more dimensions (an output unit's incoming weights) is rescaled to an L2
        norm of at most ``max_norm``. One-dimensional parameters are untouched
        (installs a :class:`~dualnn.optim.hooks.MaxNorm` hook).
    clip_grad_norm : float or None, keyword-only
        Before the update, scale all gradients together so their global L2 norm is at
        most this (as :func:`torch.nn.utils.clip_grad_norm_`). One host read per step
        on the CPU, none on a GPU (the factor stays on the device; installs a
        :class:`~dualnn.optim.hooks.GradientClipping` hook).

    Attributes
    ----------
    params : list of Parameter
    lr : float
        The learning rate; may be set between steps (learning-rate schedules).
    hooks : tuple of OptimizerHook
        The hooks in the order they run: those of the options, then those added with
        :meth:`add_hook`.

    Notes
    -----
    A step runs every hook's ``before_update`` in order (the options: clip the
    gradients, then add the L1 term), the update rule (with its ``weight_decay``), then
    every hook's ``after_update`` (the option: the max-norm constraint). None of them
    modifies ``p.grad``. The options are part of :meth:`get_config` and checkpoints;
    hooks added with :meth:`add_hook` are not (add them again after loading).
    """

    hyperparameters = Hyperparameters()
    """The subclass's :class:`~dualnn.optim.hyperparameters.Hyperparameters`, in
    constructor order (``lr`` first)."""

    option_names = ("l1", "max_norm", "clip_grad_norm")
    """Keyword-only options every optimizer accepts (each installs a hook)."""

    state_keys = ()
    """Names of the per-parameter state arrays the subclass may create."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY.setdefault(cls.__name__.lower(), cls)
        if "hyperparameter_names" in cls.__dict__ and "hyperparameters" not in cls.__dict__:
            # a subclass written against the older API, checking in check_hyperparameters
            cls.hyperparameters = Hyperparameters(
                **{n: unchecked() for n in cls.hyperparameter_names})
        cls.hyperparameter_names = tuple(cls.hyperparameters)
        if "__init__" not in cls.__dict__:
            cls.__signature__ = cls._signature()

    @classmethod
    def _signature(cls):
        P = inspect.Parameter
        return inspect.Signature(
            [P("params", P.POSITIONAL_OR_KEYWORD)]
            + [P(n, P.POSITIONAL_OR_KEYWORD, default=h.default)
               for n, h in cls.hyperparameters.items()]
            + [P(n, P.KEYWORD_ONLY, default=OPTION_OFF[n]) for n in cls.option_names])

    def __init__(self, params, *args, **config):
        owner = type(self).__name__
        names = tuple(self.hyperparameters)
        if len(args) > len(names):
            raise TypeError(f"{owner}() takes at most {len(names)} positional "
                            f"hyperparameter(s) {list(names)}, got {len(args)}")
        for name, value in zip(names, args):
            if name in config:
                raise TypeError(f"{owner}() got multiple values for {name!r}")
            config[name] = value
        unknown = sorted(set(config) - set(names) - set(self.option_names))
        if unknown:
            raise TypeError(f"{owner}() got unexpected keyword argument(s) {unknown}; "
                            f"expected some of {list(names) + list(self.option_names)}")
        self.params = check_params(owner, params)
        self._option_hooks = {}
        self._hooks = []
        self._apply_config(self._check_config(config))

    # ------------------------------------------------------------------ configuration
    def check_hyperparameters(self, hyper):
        """Checks involving several hyperparameters; returns them (normalized).

        ``hyper`` holds every declared hyperparameter, each already checked by its
        declaration. Raises :class:`ConfigurationError` naming the values.
        """
        return dict(hyper)

    def _check_config(self, config):
        """The full config checked and normalized, or ConfigurationError.

        Missing entries take the current values (once built) or the declared defaults.
        """
        owner = type(self).__name__
        names = tuple(self.hyperparameters)
        unknown = sorted(set(config) - set(names) - set(self.option_names))
        if unknown:
            raise ConfigurationError(
                f"{owner}: unknown hyperparameter(s) {unknown}; expected some of "
                f"{list(names) + list(self.option_names)}")
        if hasattr(self, "_lr"):
            defaults = self.get_config()
        else:
            defaults = {n: h.default for n, h in self.hyperparameters.items()}
            defaults.update(OPTION_OFF)
        merged = {**defaults, **config}
        hyper = self.check_hyperparameters(
            {n: h.check(owner, n, merged[n]) for n, h in self.hyperparameters.items()})
        options = {n: self._check_option(owner, n, merged[n]) for n in self.option_names}
        return {**hyper, **options}

    @staticmethod
    def _check_option(owner, name, value):
        if name == "l1":
            return check_real(owner, name, value, low=0.0)
        if value is None:
            return None
        return check_real(owner, name, value, low=0.0, low_open=True)

    def _apply_config(self, config):
        for name, value in config.items():
            setattr(self, name, value)

    def __getattr__(self, name):
        # the options read back from their hooks (only reached when no attribute exists)
        if name in OPTION_HOOKS and "_option_hooks" in self.__dict__:
            hook = self._option_hooks.get(name)
            return OPTION_OFF[name] if hook is None else hook.value
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in OPTION_HOOKS:
            self._set_option(name, value)
        else:
            object.__setattr__(self, name, value)

    def _set_option(self, name, value):
        """Install, update or remove the hook of option ``name``."""
        value = self._check_option(type(self).__name__, name, value)
        if value == OPTION_OFF[name]:
            self._option_hooks.pop(name, None)
        else:
            self._option_hooks[name] = OPTION_HOOKS[name](value)

    @property
    def hooks(self):
        """The hooks in the order they run (the options' first, then added ones)."""
        options = tuple(self._option_hooks[n] for n in OPTION_HOOKS if n in self._option_hooks)
        return options + tuple(self._hooks)

    def add_hook(self, hook):
        """Run ``hook`` at every step, after the hooks already present; returns it.

        Parameters
        ----------
        hook : OptimizerHook
            Its ``before_update(optimizer, grads)`` returns the gradients the update
            uses; its ``after_update(optimizer)`` runs once every parameter is updated.
        """
        if not isinstance(hook, OptimizerHook):
            raise ConfigurationError(
                f"{type(self).__name__}.add_hook: expected an OptimizerHook, got "
                f"{type(hook).__name__}")
        self._hooks.append(hook)
        return hook

    def remove_hook(self, hook):
        """Stop running a hook added with :meth:`add_hook`."""
        try:
            self._hooks.remove(hook)
        except ValueError:
            raise ConfigurationError(
                f"{type(self).__name__}.remove_hook: {hook!r} was not added") from None

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
        fresh state and the options' hooks; restore the state with
        :meth:`load_state_dict`).
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

    scaled_update = False
    """True when :meth:`update` passes :meth:`scaling_args` to its backend update (the
    fused kernels skip on a device flag): a :class:`~dualnn.precision.LossScaler` then
    steps it with no host read."""

    unscales_in_kernel = True
    """With :attr:`scaled_update`: the update kernels also take ``inv_scale`` (else the
    scaler unscales the gradients in place first, one more pass)."""

    def step(self, check_finite=False, grad_scaling=None):
        """Update every parameter in place from its gradient.

        Parameters
        ----------
        check_finite : bool
            First check that every gradient is finite (all checked on the device, one
            host read per step); if one is not, raise before anything changes.
        grad_scaling : GradScaling, optional
            Given by :meth:`dualnn.precision.LossScaler.step` to optimizers with
            :attr:`scaled_update`: device arrays ``inv_scale`` (or None: the gradients are
            already unscaled), ``found_inf`` and ``skipped`` (:meth:`skip_counter`). The
            update kernels multiply the gradients by ``inv_scale`` before weight decay and
            change nothing when ``found_inf`` is set; the host's ``state["step"]`` still
            counts the step (the device's ``skipped`` corrects it, see
            :meth:`sync_skipped`).

        Raises
        ------
        NonFiniteError
            With ``check_finite=True``, when a gradient holds NaN or inf; ``.layer`` is
            the layer prefix of the first such parameter's name. Parameters and state are
            left unchanged.
        """
        if check_finite:
            bad = self.first_nonfinite()
            if bad >= 0:
                p = self.params[bad]
                raise NonFiniteError(
                    f"{type(self).__name__}: non-finite gradient of {p.name} "
                    f"(shape {p.shape}, {p.dtype}); parameters and optimizer state "
                    "were not updated", layer=_layer_of(p.name))
        if grad_scaling is not None and not self.scaled_update:
            raise ConfigurationError(
                f"{type(self).__name__}.step: grad_scaling needs an optimizer whose update "
                "kernels take the loss scale (scaled_update); step it with "
                "LossScaler.step, which reads the flag on the host instead")
        self._grad_scaling = grad_scaling
        try:
            self._step(grad_scaling)
        finally:
            self._grad_scaling = None

    def _step(self, grad_scaling):
        hooks = self.hooks
        flat = self._flat_parameters()
        grads = [p.grad for p in self.params]
        if flat is not None:
            grads = FlatArrays(grads, flat.grad)
        for hook in hooks:
            grads = hook.before_update(self, grads)
        flat_grad = getattr(grads, "flat", None)
        if flat is not None and flat_grad is not None and len(flat_grad) == flat.size:
            self._flat_step(flat, flat_grad)
        else:
            for p, grad in zip(self.params, grads):
                state = p.state
                state["step"] = int(state.get("step", 0)) + 1
                self.update(p, grad, state)
        for hook in hooks:
            hook.after_update(self)

    def scaling_args(self):
        """The loss-scaling keywords of the step under way, for the backend's update call:
        ``{"inv_scale", "found_inf", "skipped"}`` device arrays, or ``{}`` without."""
        scaling = self.__dict__.get("_grad_scaling")
        if scaling is None:
            return {}
        return {"inv_scale": scaling.inv_scale, "found_inf": scaling.found_inf,
                "skipped": scaling.skipped}

    def skip_counter(self):
        """The device counter (int32 array (1,)) of steps a loss scaler skipped that the
        host's step counts still include; created on first use."""
        backend = self.params[0].backend
        if self.__dict__.get("_skip_backend") not in (None, backend):
            self.sync_skipped()  # the parameters moved: fold, then count on the new device
            self._skip_counter = None
        counter = self.__dict__.get("_skip_counter")
        if counter is None:
            counter = self._skip_counter = backend.zeros((1,), "int32")
            self._skip_backend = backend
        return counter

    def sync_skipped(self):
        """Fold the device skip counter into the host's step counts; returns how many.

        Reads one value from the device (a documented read: ``fit`` calls it at its log
        interval and at the end of each epoch, :meth:`state_dict` before saving). The
        counter is reset, and every ``state["step"]`` lowered by the count, so the
        update kernels' ``step - skipped`` is unchanged and exact.
        """
        counter = self.__dict__.get("_skip_counter")
        if counter is None:
            return 0
        n = int(self._skip_backend.item(counter))
        if n:
            counter[...] = 0
            for p in self.params:
                if "step" in p.state:
                    p.state["step"] = int(p.state["step"]) - n
            flat = self.__dict__.get("_flat")
            if flat is not None and "step" in flat.state:
                flat.state["step"] = int(flat.state["step"]) - n
            self.skipped_steps = self.__dict__.get("skipped_steps", 0) + n
        return n

    elementwise_update = False
    """True when :meth:`update` is elementwise with the same hyperparameters for every
    parameter (SGD, Adam, RMSprop...): on a backend with ``flat_parameters`` the update
    then runs once over flat buffers holding all parameters (one launch)."""

    segmented_update = False
    """True when the optimizer implements :meth:`flat_update` for flat buffers with one
    segment per parameter (LARS, LAMB: per-parameter trust ratios in a fixed number of
    launches); on a backend with ``flat_parameters`` it then replaces the per-parameter
    loop."""

    def _flat_parameters(self):
        """The :class:`~dualnn.parameter.FlatParameters` packing of :attr:`params`, built or
        rebuilt as needed, or None when the update runs per parameter."""
        params = self.params
        backend = params[0].backend
        if not ((self.elementwise_update or self.segmented_update)
                and getattr(backend, "flat_parameters", False)):
            return None
        if len({int(p.state.get("step", 0)) for p in params}) != 1:
            return None
        flat = self.__dict__.get("_flat")
        if flat is None or not flat.intact(params):
            if not FlatParameters.packable(params):
                return None
            flat = self._flat = FlatParameters(params)
        if not flat.adopt_state(self.state_keys):
            return None
        return flat

    def _flat_step(self, flat, grad):
        """One update of every parameter through the flat buffers (``grad``: the flat
        gradient the hooks produced, or ``flat.grad``)."""
        step = int(self.params[0].state.get("step", 0)) + 1
        for p in self.params:
            p.state["step"] = step
        flat.state["step"] = step
        self.flat_update(flat, grad, flat.state)
        flat.share_state(self.state_keys)

    def flat_update(self, flat, grad, state):
        """Update every parameter of ``flat`` (a :class:`~dualnn.parameter.FlatParameters`)
        from the flat gradient ``grad``; ``state`` is ``flat.state`` (flat arrays).

        The default runs :meth:`update` once on the whole buffer (elementwise rules);
        optimizers with ``segmented_update`` override it.
        """
        self.update(flat.as_parameter(), grad, state)

    def first_nonfinite(self, extra=()):
        """Index of the first non-finite array among ``extra`` then the gradients, or -1.

        All are checked on the device and read back together: one host read per step
        when the parameters share a backend (as ``step(check_finite=True)`` does).

        Parameters
        ----------
        extra : sequence of arrays
            Checked first (``fit`` passes the loss); a gradient's index is then offset by
            ``len(extra)``.
        """
        backend = self.params[0].backend
        arrays = list(extra) + [p.grad for p in self.params]
        if all(p.backend is backend for p in self.params) and all(
                backend.owns(a) for a in extra):
            return backend.nonfinite_index(arrays)
        for i, a in enumerate(arrays):
            owner = self.params[i - len(extra)].backend if i >= len(extra) else backend
            if not owner.all_finite(a):
                return i
        return -1

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
            Arrays are copies: later steps do not change them. Steps a loss scaler
            skipped are not counted (:meth:`sync_skipped` runs first).
        """
        self.sync_skipped()
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
        counter = self.__dict__.get("_skip_counter")
        if counter is not None:
            counter[...] = 0  # the loaded step counts are exact
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
