"""Dropout: p is the drop probability, inverted scaling, identity in evaluation."""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
from dualnn import layers as L
from dualnn.errors import ConfigurationError
from tests.conftest import to_host


def test_inverted_scaling_and_drop_rate(backend):
    layer = L.Dropout(0.25)
    x = backend.asarray(np.ones((200, 100)), "float32")
    y = to_host(backend, layer.forward(x, training=True))
    kept = y != 0
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.75], rtol=1e-6)
    assert abs(1 - kept.mean() - 0.25) < 0.02
    dx = to_host(backend, layer.backward(backend.asarray(np.full((200, 100), 2.0), "float32")))
    np.testing.assert_array_equal(dx != 0, kept)
    np.testing.assert_allclose(dx[kept], 2 / 0.75, rtol=1e-6)


def test_identity_in_evaluation_and_extremes(backend, rng):
    x = backend.asarray(rng.standard_normal((5, 4)), "float32")
    np.testing.assert_array_equal(to_host(backend, L.Dropout(0.5).forward(x)), to_host(backend, x))
    np.testing.assert_array_equal(to_host(backend, L.Dropout(0.0).forward(x, training=True)),
                                  to_host(backend, x))
    assert not to_host(backend, L.Dropout(1.0).forward(x, training=True)).any()


def test_masks_are_reproducible_from_the_seed(backend):
    x = backend.asarray(np.ones((8, 8)), "float32")
    dn.seed(3)
    a = to_host(backend, L.Dropout(0.5).forward(x, training=True))
    dn.seed(3)
    b = to_host(backend, L.Dropout(0.5).forward(x, training=True))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("p", [-0.1, 1.5, "0.5", True])
def test_bad_probability(backend, p):
    with pytest.raises(ConfigurationError, match="probability"):
        L.Dropout(p)
