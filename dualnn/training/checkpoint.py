"""Checkpoints: :func:`save` and :func:`load` of model, optimizer, epoch and RNG state.

File format (version 1)
-----------------------
An uncompressed ``.npz`` (a zip of ``.npy`` arrays), read with ``allow_pickle=False`` so
loading a checkpoint never runs code:

- ``__meta__``: UTF-8 JSON as a ``uint8`` array: ``format``, ``version``, the dualnn
  version, the architecture (a :class:`~dualnn.layers.Sequential` of registered layers as
  class names + ``get_config()``, nested), the name/shape/dtype of every saved array, the
  optimizer's type, hyperparameters and step counts, ``epoch``, the backend generator
  state (``backend.get_rng_state()``) and the device it was saved on;
- ``model/<name>``: every parameter and buffer (``model.state_dict()``, host arrays);
- ``optim/<index>/<key>``: the optimizer's per-parameter state arrays;
- ``extra/<name>``: optional caller arrays (``save(..., extra={...})``, e.g. the
  standardization statistics of the training data), listed under ``"extra"`` in the
  metadata and restored as :attr:`Checkpoint.extra`. Files without them load as before,
  and older readers ignore them.

Arrays are host (NumPy) copies, so a checkpoint saved on a GPU loads on the CPU and back.
Writing is atomic (:func:`dualnn.training.atomic.write_atomic`): a reader sees the old
file or the new one, never a mix, and a failed save (full disk) leaves the old file
byte-identical.

Loading validates everything (file structure, names, shapes, dtypes, optimizer type and
state, RNG state) *before* changing the model or the optimizer: a failed load changes
nothing and raises :class:`~dualnn.errors.CheckpointError`.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..errors import CheckpointError, ConfigurationError, DualnnError
from .atomic import write_atomic

__all__ = ["FORMAT", "FORMAT_VERSION", "Checkpoint", "load", "save"]

FORMAT = "dualnn-checkpoint"
FORMAT_VERSION = 1
_META = "__meta__"
_EXTRA = "extra/"


class Checkpoint:
    """What :func:`load` returns.

    Attributes
    ----------
    model : Layer
        The model (rebuilt on the current device, or the one passed in).
    optimizer : Optimizer or None
        The optimizer (rebuilt over ``model.parameters()``, or the one passed in); None
        when the checkpoint holds none and none was passed.
    epoch : int
        Epochs trained when saved (also set as ``model.epochs_trained``).
    metadata : dict
        The decoded ``__meta__`` record.
    extra : dict of str -> ndarray
        The arrays passed to :func:`save` as ``extra=`` (host NumPy arrays; empty when none).
    """

    def __init__(self, model, optimizer, epoch, metadata, extra=None):
        self.model = model
        self.optimizer = optimizer
        self.epoch = epoch
        self.metadata = metadata
        self.extra = dict(extra or {})

    def __iter__(self):  # model, optimizer, epoch = dn.load(path)
        return iter((self.model, self.optimizer, self.epoch))

    def __repr__(self):
        return (f"Checkpoint(model={type(self.model).__name__}, optimizer="
                f"{type(self.optimizer).__name__ if self.optimizer else None}, epoch={self.epoch})")


# ---------------------------------------------------------------------------------- save

class _NotRebuildable(Exception):
    pass


def _describe_layer(layer):
    children = layer.children()
    entry = {"class": type(layer).__name__, "config": layer.get_config()}
    if children:
        if type(layer).__name__ != "Sequential":
            raise _NotRebuildable(f"{type(layer).__name__} has sub-layers and is not a Sequential")
        entry["layers"] = [_describe_layer(child) for child in children]
    return entry


def _architecture(model):
    """The JSON description of the model, or ``(None, reason)`` if it cannot be rebuilt."""
    try:
        arch = _describe_layer(model)
        json.dumps(arch)
        return arch, None
    except (_NotRebuildable, TypeError, ValueError) as exc:
        return None, str(exc)


def _json_safe(value):
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return None


def _extra_arrays(extra):
    """``{"extra/<name>": host array}`` and their metadata entries, validated."""
    if extra is None:
        return {}, {}
    if not isinstance(extra, dict):
        raise ConfigurationError(f"save: extra must be a dict of name -> array, got "
                                 f"{type(extra).__name__}")
    arrays, entries = {}, {}
    for name, value in extra.items():
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"save: extra names must be non-empty strings, got "
                                     f"{name!r}")
        if type(value).__module__.split(".")[0] == "cupy":
            value = value.get()
        host = np.ascontiguousarray(value)
        if host.dtype.kind not in "biufcUS":
            raise ConfigurationError(f"save: extra[{name!r}] must hold numbers or text, got "
                                     f"dtype {host.dtype} (checkpoints never pickle)")
        arrays[_EXTRA + name] = host
        entries[name] = {"shape": list(host.shape), "dtype": host.dtype.str}
    return arrays, entries


def save(path, model, optimizer=None, epoch=None, *, extra=None):
    """Write an atomic, device-agnostic checkpoint of ``model`` (and ``optimizer``).

    Parameters
    ----------
    path : str or path
        Destination file, written exactly there (no suffix is added; ``.npz`` is the
        convention). Its directory must exist.
    model : Layer
    optimizer : Optimizer, optional
    epoch : int, optional
        Epochs trained; default ``model.epochs_trained`` (0 for an untrained model).
    extra : dict of str -> array, optional
        More arrays to keep with the model (numbers or text, any shape; device arrays are
        copied to the host), e.g. ``{"mean": mean, "std": std}`` of the training inputs.
        :func:`load` returns them as ``checkpoint.extra``.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    CheckpointError
        When the file cannot be written (the destination is left as it was).
    """
    from .. import __version__

    path = os.fspath(path)
    if epoch is None:
        epoch = int(getattr(model, "epochs_trained", 0) or 0)
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ConfigurationError(f"save: epoch must be an int >= 0, got {epoch!r}")
    arrays, extra_entries = _extra_arrays(extra)
    entries = {}
    for name, value in model.state_dict().items():
        arrays[f"model/{name}"] = np.ascontiguousarray(value)
        entries[name] = {"shape": list(value.shape), "dtype": value.dtype.name}
    arch, why_not = _architecture(model)
    backend = model.backend
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "dualnn_version": __version__,
        "architecture": arch,
        "architecture_note": why_not,
        "model": {"dtype": model.dtype, "entries": entries,
                  "parameters": [name for name, _ in model.named_parameters()]},
        "optimizer": None,
        "epoch": int(epoch),
        "rng_state": _json_safe(backend.get_rng_state()),
        "saved_on": backend.device,
    }
    if extra_entries:
        meta["extra"] = extra_entries
    if optimizer is not None:
        sd = optimizer.state_dict()
        state_meta = {}
        for index, entry in sd["state"].items():
            record = {"arrays": []}
            for key, value in entry.items():
                if key == "step":
                    record["step"] = int(value)
                else:
                    value = np.ascontiguousarray(value)
                    arrays[f"optim/{index}/{key}"] = value
                    record["arrays"].append(key)
            state_meta[str(index)] = record
        meta["optimizer"] = {
            "type": sd["type"],
            "hyperparameters": sd["hyperparameters"],
            "state": state_meta,
            "parameters": [p.name for p in optimizer.params],
            "initial_lr": getattr(optimizer, "initial_lr", None),
        }
    try:
        encoded = json.dumps(meta).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"save: checkpoint metadata is not JSON-serializable ({exc})") \
            from None
    arrays[_META] = np.frombuffer(encoded, dtype=np.uint8)
    _write_atomic(path, arrays)
    return path


def _write_atomic(path, arrays):
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.basename(path):
        raise CheckpointError(f"save: {path!r} names a directory, not a file")
    if not os.path.isdir(directory):
        raise CheckpointError(f"save: directory {directory!r} does not exist")
    try:
        write_atomic(path, lambda fh: np.savez(fh, **arrays))
    except OSError as exc:
        raise CheckpointError(f"save: cannot write {path!r} ({exc}); the previous file, if "
                              "any, is unchanged") from None


# ---------------------------------------------------------------------------------- load

def _read(path):
    """``(meta, arrays)`` of a checkpoint file, or CheckpointError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint file at {path!r}")
    if os.path.isdir(path):
        raise CheckpointError(f"{path!r} is a directory, not a checkpoint file")
    try:
        npz = np.load(path, allow_pickle=False)
        if not hasattr(npz, "files"):
            raise CheckpointError(f"{path!r} is a single .npy array, not a dualnn checkpoint")
        with npz:
            arrays = {name: np.asarray(npz[name]) for name in npz.files}
    except CheckpointError:
        raise
    except Exception as exc:  # BadZipFile, ValueError, OSError, EOFError, zlib.error...
        raise CheckpointError(f"{path!r} is not a readable dualnn checkpoint: truncated or "
                              f"corrupt ({type(exc).__name__}: {exc})") from None
    raw = arrays.pop(_META, None)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{path!r} is an .npz file but not a dualnn checkpoint "
                              "(no __meta__ record)")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path!r}: corrupt checkpoint metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a dualnn checkpoint (format "
                              f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    version = meta.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path!r}: checkpoint format version {version!r} is newer than "
                              f"this dualnn reads ({FORMAT_VERSION}); upgrade dualnn")
    _check_internal(path, meta, arrays)
    return meta, arrays


def _check_internal(path, meta, arrays):
    """The file is self-consistent: every array the metadata lists is there, as described."""
    try:
        entries = meta["model"]["entries"]
        for name, info in entries.items():
            value = arrays.get(f"model/{name}")
            if value is None:
                raise CheckpointError(f"{path!r}: array model/{name} is missing")
            if list(value.shape) != list(info["shape"]) or value.dtype.name != info["dtype"]:
                raise CheckpointError(f"{path!r}: array model/{name} does not match its "
                                      "metadata; the file is corrupt")
        opt = meta.get("optimizer")
        if opt is not None:
            for index, record in opt["state"].items():
                for key in record["arrays"]:
                    if f"optim/{index}/{key}" not in arrays:
                        raise CheckpointError(f"{path!r}: array optim/{index}/{key} is missing")
        for name, info in (meta.get("extra") or {}).items():
            value = arrays.get(_EXTRA + name)
            if value is None:
                raise CheckpointError(f"{path!r}: array {_EXTRA}{name} is missing")
            if list(value.shape) != list(info["shape"]) or value.dtype.str != info["dtype"]:
                raise CheckpointError(f"{path!r}: array {_EXTRA}{name} does not match its "
                                      "metadata; the file is corrupt")
        epoch = meta["epoch"]
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise CheckpointError(f"{path!r}: bad epoch {epoch!r}")
    except CheckpointError:
        raise
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path!r}: malformed checkpoint metadata ({exc!r})") from None


def _build_layer(entry):
    from ..layers import registered_layer

    cls = registered_layer(entry["class"])
    config = dict(entry.get("config") or {})
    if "layers" in entry:
        return cls(*[_build_layer(child) for child in entry["layers"]], **config)
    return cls(**config)


def _rebuild_model(path, meta):
    arch = meta.get("architecture")
    if arch is None:
        note = meta.get("architecture_note") or "no architecture recorded"
        raise CheckpointError(f"{path!r}: the model cannot be rebuilt from this checkpoint "
                              f"({note}); build it yourself and pass model=")
    try:
        return _build_layer(arch)
    except DualnnError as exc:
        raise CheckpointError(f"{path!r}: cannot rebuild the model: {exc}") from None
    except (TypeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path!r}: cannot rebuild the model ({type(exc).__name__}: "
                              f"{exc})") from None


def _check_model(path, meta, arrays, model):
    """Names, shapes and dtypes of the checkpoint against ``model``; nothing is changed."""
    expected = {}
    for name, param in model.named_parameters():
        expected[name] = (tuple(param.data.shape), param.dtype)
    for name, owner, attr in model._buffer_owners():
        value = getattr(owner, attr)
        expected[name] = (tuple(value.shape), np.dtype(str(value.dtype).split(".")[-1]).name
                          if not hasattr(value.dtype, "name") else value.dtype.name)
    saved = meta["model"]["entries"]
    problems = []
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    if missing:
        problems.append(f"the model has {missing}, the checkpoint does not")
    if extra:
        problems.append(f"the checkpoint has {extra}, the model does not")
    for name in sorted(set(expected) & set(saved)):
        shape, dtype = expected[name]
        got = arrays[f"model/{name}"]
        if tuple(got.shape) != shape or got.dtype.name != dtype:
            problems.append(f"{name!r}: model {shape} {dtype}, checkpoint {tuple(got.shape)} "
                            f"{got.dtype.name}")
    if problems:
        raise CheckpointError(f"{path!r} does not match the model: " + "; ".join(problems))
    return {name: arrays[f"model/{name}"] for name in expected}


def _optimizer_state_dict(meta, arrays):
    opt = meta["optimizer"]
    state = {}
    for index, record in opt["state"].items():
        entry = {}
        if "step" in record:
            entry["step"] = int(record["step"])
        for key in record["arrays"]:
            entry[key] = arrays[f"optim/{index}/{key}"]
        state[int(index)] = entry
    return {"type": opt["type"], "hyperparameters": opt["hyperparameters"], "state": state}


def _check_optimizer(path, meta, optimizer, sd):
    """Validate ``sd`` for ``optimizer`` on stand-in parameters: the real one is untouched."""
    from ..device import backend_for
    from ..parameter import Parameter

    if sd["type"] != type(optimizer).__name__:
        raise CheckpointError(f"{path!r} holds a {sd['type']} optimizer state, the optimizer "
                              f"given is a {type(optimizer).__name__}")
    names = meta["optimizer"].get("parameters")
    mine = [p.name for p in optimizer.params]
    if names is not None and list(names) != mine:
        raise CheckpointError(f"{path!r}: the saved optimizer trains parameters {names}, the "
                              f"given one trains {mine}")
    cpu = backend_for("cpu")
    stand_ins = [Parameter(np.zeros(p.shape, dtype=p.dtype), cpu, name=p.name)
                 for p in optimizer.params]
    try:
        probe = type(optimizer)(stand_ins, **optimizer.get_config())
        probe.load_state_dict(sd)
    except DualnnError as exc:
        raise CheckpointError(f"{path!r}: optimizer state does not fit the optimizer: {exc}") \
            from None
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path!r}: malformed optimizer state ({type(exc).__name__}: "
                              f"{exc})") from None


def _check_rng_state(path, backend, state):
    if state is None:
        return
    try:
        probe = type(backend.host_rng.bit_generator)()
        probe.state = state
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{path!r}: bad RNG state ({exc})") from None


def load(path, model=None, optimizer=None):
    """Load a checkpoint written by :func:`save`.

    ``load(path)`` rebuilds the model (and the optimizer, if one was saved) on the current
    device; ``load(path, model=m, optimizer=o)`` restores them in place. Either way the
    epoch counter (``model.epochs_trained``), ``optimizer.initial_lr`` (LR schedules) and
    the model backend's random generator are restored, so training resumes exactly as an
    uninterrupted run (on the CPU, same seed).

    Parameters
    ----------
    path : str or path
    model : Layer, optional
        Restore into this model (names, shapes and dtypes must match).
    optimizer : Optimizer, optional
        Restore into this optimizer (same type; needs ``model``). If omitted while a
        model is given, the saved optimizer state is ignored.

    Returns
    -------
    Checkpoint
        ``.model``, ``.optimizer`` (or None), ``.epoch``, ``.extra`` (the ``extra=``
        arrays of :func:`save`, ``{}`` when none).

    Raises
    ------
    CheckpointError
        Missing, truncated, corrupt or mismatched file; nothing was changed.
    """
    path = os.fspath(path)
    meta, arrays = _read(path)
    if model is None and optimizer is not None:
        raise CheckpointError("load: an optimizer was given without its model; pass model= too")
    if model is None:
        model = _rebuild_model(path, meta)
        if meta.get("optimizer") is not None:
            from .. import optim
            opt_meta = meta["optimizer"]
            try:
                cls = optim.get(opt_meta["type"])
                optimizer = cls(model.parameters(), **opt_meta["hyperparameters"])
            except DualnnError as exc:
                raise CheckpointError(f"{path!r}: cannot rebuild the optimizer: {exc}") from None
            except TypeError as exc:
                raise CheckpointError(f"{path!r}: cannot rebuild the optimizer ({exc})") \
                    from None
    # ---- validate everything first
    state = _check_model(path, meta, arrays, model)
    sd = None
    if optimizer is not None:
        if meta.get("optimizer") is None:
            raise CheckpointError(f"{path!r} holds no optimizer state; load without optimizer=")
        sd = _optimizer_state_dict(meta, arrays)
        _check_optimizer(path, meta, optimizer, sd)
    rng_state = meta.get("rng_state")
    _check_rng_state(path, model.backend, rng_state)
    # ---- then change things
    try:
        model.load_state_dict(state)
        if optimizer is not None:
            optimizer.load_state_dict(sd)
            initial_lr = meta["optimizer"].get("initial_lr")
            if initial_lr is not None:
                optimizer.initial_lr = float(initial_lr)
            elif hasattr(optimizer, "initial_lr"):
                del optimizer.initial_lr
    except DualnnError as exc:  # validated above; kept as a safety net
        raise CheckpointError(f"{path!r}: {exc}") from None
    model.epochs_trained = int(meta["epoch"])
    if rng_state is not None:
        model.backend.set_rng_state(rng_state)
    extra = {name: arrays[_EXTRA + name] for name in meta.get("extra") or {}}
    return Checkpoint(model, optimizer, int(meta["epoch"]), meta, extra)
