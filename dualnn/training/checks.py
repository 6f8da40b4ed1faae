"""Validation of the data given to fit, evaluate and predict, done once before any state
changes."""

from __future__ import annotations

import numpy as np

from ..data.loader import check_finite_rows, open_array
from ..errors import LabelError, ShapeError


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
    return open_array(data, what)


def check_data(model, loss_fn, X, y, who, need_y=True):
    """Validate X (and y) once, without reading a memory-mapped file into memory whole."""
    X = host_view(model, X, f"{who}: X")
    shape = tuple(X.shape)
    if len(shape) != 2:
        raise ShapeError(f"{who}: X must be 2-D (samples, features), got shape {shape}; "
                         "reshape single samples to (1, n) and images to (n, h*w)")
    if np.dtype(X.dtype).kind not in "fiub":
        raise ShapeError(f"{who}: X must hold numbers castable to float, got dtype "
                         f"{np.dtype(X.dtype)}")
    if shape[0] == 0:
        raise ShapeError(f"{who}: X has no rows")
    features = input_features(model)
    if features is not None and shape[1] != features:
        raise ShapeError(f"{who}: the model's first layer expects {features} features, X has "
                         f"{shape[1]} (shape {shape})")
    check_finite_rows(X, f"{who}: X")
    if y is None:
        if need_y:
            raise ShapeError(f"{who}: y (targets) is required")
        return X, None
    y = host_view(model, y, f"{who}: y")
    if len(y.shape) < 1 or int(y.shape[0]) != shape[0]:
        raise ShapeError(f"{who}: X and y differ in length: X has {shape[0]} rows, y has shape "
                         f"{tuple(y.shape)}")
    kind = np.dtype(y.dtype).kind
    if kind not in "fiub":
        raise ShapeError(f"{who}: y must be numeric, got dtype {np.dtype(y.dtype)}")
    if kind == "f":
        check_finite_rows(y, f"{who}: y")
    elif kind in "iu" and len(y.shape) == 1 and is_label_loss(loss_fn):
        classes = output_classes(model)
        labels = np.asarray(y)
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or (classes is not None and high >= classes):
            bound = f"[0, {classes})" if classes is not None else ">= 0"
            raise LabelError(f"{who}: class labels must lie in {bound} for a model with "
                             f"{classes} outputs; y holds values from {low} to {high}")
    return X, y


def is_label_loss(loss_fn):
    from ..losses import Hinge, SoftmaxCrossEntropy
    return isinstance(loss_fn, (SoftmaxCrossEntropy, Hinge))


def is_labels(y):
    return y is not None and np.dtype(y.dtype).kind in "iu" and len(y.shape) == 1


def model_dtype(model):
    return model.dtype or "float32"


def to_device(backend, yb, labels, dtype):
    return backend.asarray(yb) if labels else backend.asarray(yb, dtype)
