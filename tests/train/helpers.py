"""Small builders shared by the training-workflow tests."""

from __future__ import annotations

import functools

import numpy as np

import dualnn as dn


@functools.cache
def _digits():
    return dn.datasets.load("digits")


def digits():
    """The fixed digits split (cached; arrays are shared, do not modify them)."""
    return _digits()


def mlp(n_in=64, hidden=(32,), n_out=10, batch_norm=True, dropout=0.0, dtype="float32"):
    layers = []
    width = n_in
    for size in hidden:
        layers.append(dn.layers.Linear(width, size, init="he", dtype=dtype))
        if batch_norm:
            layers.append(dn.layers.BatchNorm(size, dtype=dtype))
        layers.append(dn.layers.ReLU())
        if dropout:
            layers.append(dn.layers.Dropout(dropout))
        width = size
    layers.append(dn.layers.Linear(width, n_out, dtype=dtype))
    return dn.Sequential(*layers)


def states_equal(a, b):
    return sorted(a) == sorted(b) and all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)
