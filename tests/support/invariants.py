"""The invariant harness: "a clear dualnn error and nothing changed, or success".

:func:`snapshot` copies everything a call could change by mistake (parameters, buffers,
optimizer state and hyperparameters, the epoch counter, the backend's generator, the bytes
of checkpoint files); :func:`check_call` runs a call with a (hostile) argument and asserts
that it either succeeds or raises a :class:`~dualnn.errors.DualnnError` with a message,
the snapshot being unchanged in the second case.
"""

from __future__ import annotations

import os

import numpy as np

from dualnn.errors import DualnnError

__all__ = ["Outcome", "check_call", "snapshot", "snapshots_equal"]


def _optimizer_state(optimizer):
    if optimizer is None:
        return None
    sd = optimizer.state_dict()
    flat = {"hyperparameters": repr(sd["hyperparameters"]), "lr": float(optimizer.lr)}
    for index, entry in sd["state"].items():
        for key, value in entry.items():
            flat[f"{index}/{key}"] = np.array(value, copy=True)
    return flat


def snapshot(model=None, optimizer=None, paths=()):
    """Copies of the state a failed call must leave alone.

    Parameters
    ----------
    model : Layer, optional
        Its ``state_dict()`` (parameters and buffers, host copies), ``epochs_trained`` and
        its backend's RNG state.
    optimizer : Optimizer, optional
        Its state arrays, step counts, hyperparameters and learning rate.
    paths : iterable of path
        Files whose bytes must not change (None for a file that does not exist).
    """
    snap = {}
    if model is not None:
        snap["model"] = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
        snap["epochs_trained"] = model.epochs_trained
        snap["rng"] = repr(model.backend.get_rng_state())
    snap["optimizer"] = _optimizer_state(optimizer)
    files = {}
    for path in paths:
        path = os.fspath(path)
        try:
            with open(path, "rb") as fh:
                files[path] = fh.read()
        except FileNotFoundError:
            files[path] = None
    snap["files"] = files
    return snap


def _equal(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b,
                                                                           equal_nan=a.dtype.kind == "f")
    return a == b


def snapshots_equal(a, b):
    """True when two :func:`snapshot` results match exactly (NaN equal to NaN)."""
    return _equal(a, b)


def _differences(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{prefix}{k}: only on one side" for k in a.keys() ^ b.keys()]
        for k in a.keys() & b.keys():
            out += _differences(a[k], b[k], f"{prefix}{k}.")
        return out
    return [] if _equal(a, b) else [prefix.rstrip(".")]


class Outcome:
    """What :func:`check_call` saw: ``result`` on success, else ``error``."""

    def __init__(self, result=None, error=None):
        self.result = result
        self.error = error

    @property
    def ok(self):
        return self.error is None


def check_call(call, model=None, optimizer=None, paths=()):
    """Run ``call()``: success, or a DualnnError with a message and nothing changed.

    Returns
    -------
    Outcome

    Raises
    ------
    AssertionError
        When ``call`` raised something other than a DualnnError, raised one without a
        message, or changed the snapshot while failing.
    """
    before = snapshot(model, optimizer, paths)
    try:
        result = call()
    except DualnnError as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        after = snapshot(model, optimizer, paths)
        changed = _differences(before, after)
        assert not changed, f"{type(exc).__name__}({exc}) but changed: {changed}"
        return Outcome(error=exc)
    except Exception as exc:  # the point: anything else is a failure
        raise AssertionError(f"not a dualnn error: {type(exc).__name__}: {exc}") from exc
    return Outcome(result=result)
