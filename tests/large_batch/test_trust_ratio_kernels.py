"""The Numba CPU kernels of kernels/trust_ratio against their reference twins."""

from __future__ import annotations

import numpy as np
import pytest
from dualnn.kernels.trust_ratio import cpu, reference

SHAPES = [(1,), (7,), (3, 5), (64, 33), (2, 3, 4), (4097,)]
EDGES = ["random", "zero-param", "zero-grad", "huge", "tiny"]


def _arrays(shape, dtype, edge, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    if edge == "zero-param":
        p[...] = 0
    elif edge == "zero-grad":
        g[...] = 0
    elif edge == "huge":
        p *= 1e15
        g *= 1e15
    elif edge == "tiny":
        g *= 1e-20
    return p.astype(dtype), g.astype(dtype)


def _tol(dtype):
    return {"rtol": 1e-4, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-11, "atol": 1e-13}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("adapt", [True, False])
def test_lamb_cpu_matches_reference(dtype, shape, edge, adapt):
    p, g = _arrays(shape, dtype, edge)
    rng = np.random.default_rng(1)
    m = (0.1 * rng.standard_normal(shape)).astype(dtype)
    v = np.abs(0.1 * rng.standard_normal(shape)).astype(dtype)
    hyper = {"step": 3, "lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-6, "weight_decay": 0.01,
                 "adapt": adapt}
    want_p, want_m, want_v = reference.lamb_update(np, p, g, m, v, **hyper)
    cpu.lamb_update(p, g, m, v, **hyper)
    np.testing.assert_allclose(m, want_m, **_tol(dtype))
    np.testing.assert_allclose(v, want_v, **_tol(dtype))
    np.testing.assert_allclose(p, want_p, **_tol(dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("edge", EDGES)
@pytest.mark.parametrize("adapt", [True, False])
def test_lars_cpu_matches_reference(dtype, shape, edge, adapt):
    p, g = _arrays(shape, dtype, edge)
    b = (0.1 * np.random.default_rng(2).standard_normal(shape)).astype(dtype)
    hyper = {"lr": 0.5, "momentum": 0.9, "weight_decay": 1e-3, "trust_coefficient": 0.001, "eps": 1e-8,
                 "adapt": adapt}
    want_p, want_b = reference.lars_update(np, p, g, b, **hyper)
    cpu.lars_update(p, g, b, **hyper)
    np.testing.assert_allclose(b, want_b, **_tol(dtype))
    np.testing.assert_allclose(p, want_p, **_tol(dtype))


def test_ratio_is_one_on_zero_norms():
    p = np.zeros(5)
    g = np.ones(5)
    assert cpu.lars_update(p, g, np.zeros(5), lr=1.0) == 1.0
    assert cpu.lamb_update(np.zeros(5), g, np.zeros(5), np.zeros(5), step=1, lr=1.0) == 1.0
    assert cpu.lamb_update(np.ones(5), g, np.zeros(5), np.zeros(5), step=1, lr=1.0) != 1.0


@pytest.mark.parametrize("bad", ["dtype", "shape", "layout"])
def test_cpu_rejects_bad_arrays(bad):
    p = np.ones((4, 3))
    g = np.ones((4, 3))
    if bad == "dtype":
        g = g.astype(np.float32)
    elif bad == "shape":
        g = np.ones((3, 4))
    else:
        g = np.ones((3, 4)).T
    with pytest.raises(ValueError, match="lars_update"):
        cpu.lars_update(p, g, np.zeros((4, 3)), lr=1.0)


def test_reference_keeps_values_on_device():
    # with array_api_strict the whole step runs without converting to host scalars
    xp = pytest.importorskip("array_api_strict")
    p = xp.asarray([[1.0, 2.0], [3.0, 4.0]], dtype=xp.float32)
    g = xp.asarray([[0.5, 0.5], [0.5, 0.5]], dtype=xp.float32)
    z = xp.zeros((2, 2), dtype=xp.float32)
    new_p, _, _ = reference.lamb_update(xp, p, g, z, z, step=1, lr=0.1)
    new_q, _ = reference.lars_update(xp, p, g, z, lr=0.1)
    assert new_p.dtype == xp.float32 and new_q.dtype == xp.float32
