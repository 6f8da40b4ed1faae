"""The classic notes' hand-built threshold networks, reproduced with dualnn layers."""

from __future__ import annotations

import numpy as np

import dualnn as dn
from dualnn import layers as L
from tests.conftest import to_host


def _set(backend, layer, weight, bias):
    backend.assign(layer.weight.data, backend.asarray(np.asarray(weight, float), "float64"))
    backend.assign(layer.bias.data, backend.asarray(np.asarray(bias, float), "float64"))


def test_one_two_one_threshold_network(backend):
    hidden, output = L.Linear(1, 2, dtype="float64"), L.Linear(2, 1, dtype="float64")
    _set(backend, hidden, [[1.0], [1.0]], [-2.0, -4.0])
    _set(backend, output, [[1.0, -2.0]], [-0.5])
    model = dn.Sequential(hidden, L.Step(), output, L.Step())
    x = backend.asarray(np.array([[0.0], [1.0], [3.0], [5.0], [3.5]]), "float64")
    assert to_host(backend, model.forward(x)).ravel().tolist() == [0, 0, 1, 0, 1]


def test_two_three_one_triangle_network(backend, rng):
    hidden, output = L.Linear(2, 3, dtype="float64"), L.Linear(3, 1, dtype="float64")
    # Units fire for x1 >= 0, x2 >= 0 and x1 + x2 < 1 (written as -x1 - x2 + 1 > 0,
    # a strict inequality the >= threshold meets on a grid that avoids the edge).
    _set(backend, hidden, [[1, 0], [0, 1], [-1, -1]], [0, 0, 1 - 1e-9])
    _set(backend, output, [[1, 1, 1]], [-2.5])
    model = dn.Sequential(hidden, L.Step(), output, L.Step())
    points = rng.uniform(-1, 2, (400, 2))
    points = points[np.abs(points.sum(axis=1) - 1) > 1e-6]
    inside = (points[:, 0] >= 0) & (points[:, 1] >= 0) & (points.sum(axis=1) < 1)
    got = to_host(backend, model.forward(backend.asarray(points, "float64"))).ravel()
    assert inside.any() and (~inside).any()
    np.testing.assert_array_equal(got, inside.astype(float))
    corners = np.array([[0.0, 0.0], [0.999, 0.0], [0.0, 0.999], [1.0, 0.0], [-0.001, 0.5]])
    got = to_host(backend, model.forward(backend.asarray(corners, "float64"))).ravel()
    assert got.tolist() == [1, 1, 1, 0, 0]
