"""Activation kernels (forward with bias, backward) against the reference, in the simulator."""

from __future__ import annotations

import numpy as np
import pytest
from cudasim_helpers import DTYPES, EDGE_VALUES, tolerances
from dualnn.kernels import reference

KINDS = reference.ACTIVATIONS
ALPHA = {"leaky_relu": 0.01, "elu": 1.0}


def _edge_matrix(dtype, rng, shape=(5, 7)):
    """A (5, 7) matrix whose first entries are the edge values, the rest random."""
    values = rng.standard_normal(shape[0] * shape[1]) * 3
    values[:len(EDGE_VALUES)] = EDGE_VALUES
    return values.reshape(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_activation_backward_matches_reference(ck, rng, kind, dtype):
    alpha = ALPHA.get(kind, 0.0)
    z = _edge_matrix(dtype, rng)
    dy = _edge_matrix(dtype, rng)[::-1].copy()
    saved = (reference.activation_forward(np, kind, z, alpha)
             if kind in reference.BACKWARD_FROM_OUTPUT else z)
    saved = np.ascontiguousarray(saved, dtype=dtype)
    expected = reference.activation_backward(np, kind, dy, saved, alpha)
    out = np.full_like(dy, 7.0)
    result = ck.activation_backward(kind, dy, saved, alpha, out=out)
    assert result is out
    np.testing.assert_allclose(out, expected, *tolerances(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["relu", "elu", "sigmoid"])
def test_activation_backward_in_place_and_grid_stride(tiny_grid, rng, kind, dtype):
    ck = tiny_grid
    alpha = ALPHA.get(kind, 0.0)
    z = rng.standard_normal((5, 7)).astype(dtype)
    saved = np.ascontiguousarray(reference.activation_forward(np, kind, z, alpha)
                                 if kind == "sigmoid" else z)
    dy = rng.standard_normal((5, 7)).astype(dtype)
    expected = reference.activation_backward(np, kind, dy, saved, alpha)
    ck.activation_backward(kind, dy, saved, alpha, out=dy)  # 8 threads, 35 elements
    np.testing.assert_allclose(dy, expected, *tolerances(dtype))


def test_kink_derivatives_follow_pytorch(ck):
    z = np.zeros((1, 1), np.float32)
    dy = np.ones((1, 1), np.float32)
    out = np.empty_like(dy)
    assert ck.activation_backward("relu", dy, z, out=out)[0, 0] == 0
    assert ck.activation_backward("leaky_relu", dy, z, 0.1, out=out)[0, 0] == np.float32(0.1)
    assert ck.activation_backward("elu", dy, z, 0.7, out=out)[0, 0] == np.float32(0.7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_activation_forward_matches_reference(ck, rng, kind, dtype, with_bias):
    alpha = ALPHA.get(kind, 0.0)
    z = _edge_matrix(dtype, rng)
    b = rng.standard_normal(7).astype(dtype) if with_bias else None
    expected = reference.bias_activation_forward(np, z, b, kind, alpha)
    out = np.empty_like(z)
    assert ck.bias_activation_forward(z, b, kind, alpha, out=out) is out
    np.testing.assert_allclose(out, expected, *tolerances(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_activation_forward_in_place_large_magnitudes(tiny_grid, dtype):
    """sigmoid/tanh/ELU of |z| ~ 1e4 saturate without overflow; out aliases z."""
    ck = tiny_grid
    z = np.array([[1e4, -1e4, 3e4], [-3e4, 0.0, 20.0]], dtype)
    b = np.array([0.0, 1.0, -1.0], dtype)
    for kind in ("sigmoid", "tanh", "elu"):
        work = z.copy()
        expected = reference.bias_activation_forward(np, z, b, kind, 1.0)
        ck.bias_activation_forward(work, b, kind, 1.0, out=work)
        np.testing.assert_allclose(work, expected, *tolerances(dtype))
        assert np.isfinite(work).all()


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (16, 9)])
def test_activation_forward_any_shape(ck, rng, shape):
    z = rng.standard_normal(shape).astype(np.float32)
    out = np.empty_like(z)
    ck.activation_forward("tanh", z, out=out)
    np.testing.assert_allclose(out, np.tanh(z), 2e-6, 1e-7)


def test_empty_input_launches_nothing(ck):
    z = np.empty((0, 4), np.float32)
    out = np.empty_like(z)
    assert ck.bias_activation_forward(z, np.zeros(4, np.float32), "relu", out=out) is out
    assert ck.activation_backward("relu", z, z, out=out) is out


class TestLauncherChecks:
    """A compiled kernel does not type-check: the launcher must refuse bad arguments."""

    def test_dtype_mismatch(self, ck):
        a = np.zeros((2, 3), np.float32)
        with pytest.raises(TypeError, match="dtype"):
            ck.activation_backward("relu", a, a.astype(np.float64), out=a)

    def test_integer_dtype(self, ck):
        a = np.zeros((2, 3), np.int64)
        with pytest.raises(TypeError, match="no kernel"):
            ck.activation_backward("relu", a, a, out=a)

    def test_not_contiguous(self, ck):
        a = np.zeros((3, 2), np.float32, order="F")
        with pytest.raises(ValueError, match="C-contiguous"):
            ck.activation_backward("relu", a, a, out=a)

    def test_shape_mismatch(self, ck):
        a = np.zeros((2, 3), np.float32)
        with pytest.raises(ValueError, match="shape"):
            ck.activation_backward("relu", a, np.zeros((3, 2), np.float32), out=a)
        with pytest.raises(ValueError, match="shape"):
            ck.bias_activation_forward(a, np.zeros(2, np.float32), "relu", out=a)

    def test_unknown_kind(self, ck):
        a = np.zeros((2, 3), np.float32)
        with pytest.raises(ValueError, match="unknown activation"):
            ck.activation_backward("gelu", a, a, out=a)

    def test_not_an_array(self, ck):
        a = np.zeros((2, 3), np.float32)
        with pytest.raises(TypeError):
            ck.activation_backward("relu", [[0.0]], a, out=a)
