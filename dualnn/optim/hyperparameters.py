"""Declared hyperparameters: each optimizer lists its own once, with default and check.

An optimizer class sets ``hyperparameters`` to :class:`Hyperparameters` (name ->
:class:`Hyperparameter`, in constructor order); the base
:class:`~dualnn.optim.Optimizer` builds the constructor, validation, ``get_config`` and
``load_state_dict`` from it. A subclass changing only defaults says so with
:meth:`Hyperparameters.with_defaults`.

>>> class Lion(Optimizer):                                        # doctest: +SKIP
...     hyperparameters = Hyperparameters(
...         lr=real(1e-4, low=0.0),
...         betas=real_pair((0.9, 0.99), low=0.0, high=1.0),
...         weight_decay=real(0.0, low=0.0))
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

from ..errors import ConfigurationError


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


class Hyperparameter:
    """One declared hyperparameter: its default and how a given value is checked.

    Parameters
    ----------
    default : object
        The constructor default.
    check : callable ``(owner, name, value) -> value``
        Returns the value normalized (float, bool, tuple) or raises
        :class:`ConfigurationError` naming ``owner`` and ``name``.
    """

    __slots__ = ("check", "default")

    def __init__(self, default, check):
        self.default = default
        self.check = check

    def with_default(self, default):
        """The same hyperparameter with another default (for a subclass)."""
        return Hyperparameter(default, self.check)

    def __repr__(self):
        return f"Hyperparameter(default={self.default!r})"


def real(default, **bounds):
    """A real hyperparameter; ``bounds`` as :func:`check_real` (``low=0.0`` ...)."""
    return Hyperparameter(default, lambda owner, name, value: check_real(owner, name, value,
                                                                         **bounds))


def flag(default):
    """A boolean hyperparameter."""
    return Hyperparameter(default, check_bool)


def real_pair(default, **bounds):
    """A pair of reals (such as Adam's ``betas``), each checked with ``bounds``."""
    def check(owner, name, value):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) \
                or len(value) != 2:
            raise ConfigurationError(
                f"{owner}: {name} must be a pair (a, b), got {value!r}")
        return tuple(check_real(owner, f"{name}[{i}]", v, **bounds)
                     for i, v in enumerate(value))
    return Hyperparameter(tuple(default), check)


def unchecked(default=None):
    """A hyperparameter taken as given (a subclass checks it in ``check_hyperparameters``)."""
    return Hyperparameter(default, lambda owner, name, value: value)


class Hyperparameters(Mapping):
    """An optimizer's declared hyperparameters: an immutable, ordered name -> spec map.

    Parameters
    ----------
    **specs : Hyperparameter
        In constructor order (``lr`` first).
    """

    def __init__(self, **specs):
        for name, spec in specs.items():
            if not isinstance(spec, Hyperparameter):
                raise ConfigurationError(
                    f"hyperparameter {name!r} must be declared with a Hyperparameter (e.g. "
                    f"real(1e-3, low=0.0)), got {type(spec).__name__}")
        self._specs = dict(specs)

    def __getitem__(self, name):
        return self._specs[name]

    def __iter__(self):
        return iter(self._specs)

    def __len__(self):
        return len(self._specs)

    def with_defaults(self, **defaults):
        """The same declarations with some defaults changed (same order and checks)."""
        unknown = sorted(set(defaults) - set(self._specs))
        if unknown:
            raise ConfigurationError(f"with_defaults: no hyperparameter(s) {unknown} declared")
        return Hyperparameters(**{n: spec.with_default(defaults[n]) if n in defaults else spec
                                  for n, spec in self._specs.items()})

    def __repr__(self):
        return f"Hyperparameters({', '.join(f'{n}={s!r}' for n, s in self.items())})"
