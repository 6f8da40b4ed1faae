"""Validation of the data given to fit, evaluate and predict, done once before any state
changes."""

from __future__ import annotations

import copy

import numpy as np

from ..data.loader import check_finite_rows, open_array
from ..errors import DualnnError, LabelError, ShapeError


def leaf_layers(model):
    return [layer for layer in model.layers() if not layer.children()]


def input_features(model):
    leaves = leaf_layers(model)
    if not leaves:
        return None
    first = leaves[0]
    for attr in ("in_features", "num_features"):
        value = getattr(first, attr, None)
        if isinstance(value, int):
            return value
    return None


def output_classes(model):
    for layer in reversed(leaf_layers(model)):
        value = getattr(layer, "out_features", None)
        if isinstance(value, int):
            return value
    return None


def has_batchnorm(model):
    from ..layers.batchnorm import BatchNorm
    return any(isinstance(layer, BatchNorm) for layer in model.layers())


def host_view(model, data, what):
    """Host-side view of ``data``: device arrays of the model's backend come back to the host."""
    backend = model.backend
    if data is not None and not isinstance(data, np.ndarray) and backend.owns(data):
        return backend.to_host(data)
    if hasattr(data, "__dlpack__") and not isinstance(data, np.ndarray):
        from ..interop import host_view as dlpack_host_view
        return dlpack_host_view(data, what)  # e.g. a PyTorch tensor: a view, not a copy
    return open_array(data, what)


def check_data(model, loss_fn, X, y, who, need_y=True, names=("X", "y")):
    """Validate ``X`` (and ``y``) once, before any state changes; returns host views.

    Checked, without reading a memory-mapped file into memory whole: ``X`` is 2-D, numeric,
    has rows and the model's feature count; ``X`` and float ``y`` are finite *after* the
    cast to the model's dtype; ``y`` has one entry per row. With a class-label loss
    (:class:`~dualnn.losses.SoftmaxCrossEntropy`, :class:`~dualnn.losses.Hinge`) ``y``
    must be 1-D integer labels within ``[0, classes)``; bool, float and one-hot ``y`` are
    refused with a hint. Finally two rows go through the model in evaluation mode and the
    loss (a copy of it), so any shape the loss would refuse at the first step is refused
    here, naming the argument.

    Parameters
    ----------
    who : str
        The calling function, e.g. ``"fit"``.
    names : (str, str)
        How the arguments are called in messages, e.g. ``("validation_data[0]",
        "validation_data[1]")``.

    Raises
    ------
    ShapeError, NonFiniteInputError, LabelError, DataFileError
    """
    x_name, y_name = names
    X = host_view(model, X, f"{who}: {x_name}")
    shape = tuple(X.shape)
    if len(shape) != 2:
        raise ShapeError(f"{who}: {x_name} must be 2-D (samples, features), got shape {shape}; "
                         "reshape single samples to (1, n) and images to (n, h*w)")
    if np.dtype(X.dtype).kind not in "fiub":
        raise ShapeError(f"{who}: {x_name} must hold numbers castable to float, got dtype "
                         f"{np.dtype(X.dtype)}")
    if shape[0] == 0:
        raise ShapeError(f"{who}: {x_name} has no rows")
    features = input_features(model)
    if features is not None and shape[1] != features:
        raise ShapeError(f"{who}: the model's first layer expects {features} features, "
                         f"{x_name} has {shape[1]} (shape {shape})")
    dtype = model_dtype(model)
    check_finite_rows(X, f"{who}: {x_name}", dtype)
    if y is None:
        if need_y:
            raise ShapeError(f"{who}: {y_name} (targets) is required")
        return X, None
    y = host_view(model, y, f"{who}: {y_name}")
    if len(y.shape) < 1 or int(y.shape[0]) != shape[0]:
        raise ShapeError(f"{who}: {x_name} and {y_name} differ in length: {x_name} has "
                         f"{shape[0]} rows, {y_name} has shape {tuple(y.shape)}")
    kind = np.dtype(y.dtype).kind
    if kind not in "fiub":
        raise ShapeError(f"{who}: {y_name} must be numeric, got dtype {np.dtype(y.dtype)}")
    if is_label_loss(loss_fn):
        _check_labels(model, loss_fn, y, f"{who}: {y_name}")
    elif kind == "f":
        check_finite_rows(y, f"{who}: {y_name}", dtype)
    if loss_fn is not None:
        _probe(model, loss_fn, X, y, who, x_name, y_name)
    return X, y


def _check_labels(model, loss_fn, y, what):
    loss = type(loss_fn).__name__
    kind = np.dtype(y.dtype).kind
    shape = tuple(y.shape)
    if len(shape) == 2 and kind in "fiub":
        raise LabelError(f"{what}: {loss} takes integer class labels of shape ({shape[0]},), "
                         f"got a 2-D array of shape {shape} (one-hot targets?); pass "
                         "y.argmax(axis=1)")
    if len(shape) != 1:
        raise LabelError(f"{what}: {loss} takes integer class labels of shape ({shape[0]},), "
                         f"got shape {shape}")
    if kind == "b":
        raise LabelError(f"{what}: {loss} takes integer class labels, got dtype bool; for two "
                         "classes pass y.astype(int) (0 and 1)")
    if kind == "f":
        raise LabelError(f"{what}: {loss} takes integer class labels, got dtype "
                         f"{np.dtype(y.dtype)}; convert with y.astype(int) if they are whole "
                         "numbers, or use MSE/BinaryCrossEntropy for float targets")
    classes = output_classes(model)
    labels = np.asarray(y)
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (classes is not None and high >= classes):
        bad = int(np.flatnonzero((labels < 0) | (labels >= (classes or np.iinfo(np.int64).max)))
                  [0])
        bound = f"[0, {classes})" if classes is not None else ">= 0"
        raise LabelError(f"{what}: class labels must lie in {bound} for a model with "
                         f"{classes} outputs; got {int(labels[bad])} in row {bad} (values "
                         f"from {low} to {high})")


def _probe(model, loss_fn, X, y, who, x_name, y_name):
    """Two rows through the model (evaluation mode: no state changes) and a copy of the
    loss, so that whatever the loss refuses is refused before training, naming ``y``."""
    backend = model.backend
    dtype = model_dtype(model)
    rows = slice(0, min(2, int(X.shape[0])))
    labels = is_labels(y)
    xb = backend.asarray(np.asarray(X[rows]), dtype)
    yb = to_device(backend, np.asarray(y[rows]), labels, dtype)
    out = model.forward(xb, training=False)
    try:
        copy.copy(loss_fn).forward(out, yb)
    except DualnnError as exc:
        raise type(exc)(f"{who}: {y_name} does not suit the model's output and the loss: "
                        f"{exc}") from None


def is_label_loss(loss_fn):
    from ..losses import Hinge, SoftmaxCrossEntropy
    return isinstance(loss_fn, (SoftmaxCrossEntropy, Hinge))


def is_labels(y):
    return y is not None and np.dtype(y.dtype).kind in "iu" and len(y.shape) == 1


def model_dtype(model):
    return model.dtype or "float32"


def to_device(backend, yb, labels, dtype):
    return backend.asarray(yb) if labels else backend.asarray(yb, dtype)
