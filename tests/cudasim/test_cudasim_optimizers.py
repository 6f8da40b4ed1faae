"""Optimizer-update kernels against the reference, several steps, in the simulator."""

from __future__ import annotations

import numpy as np
import pytest
from cudasim_helpers import DTYPES
from dualnn.kernels import reference

SHAPES = [(1,), (5, 7)]


def _tol(dtype):
    return {"rtol": 3e-6, "atol": 1e-7} if dtype == "float32" else {"rtol": 1e-13, "atol": 1e-15}


def _state(rng, shape, dtype, positive=False):
    a = rng.standard_normal(shape)
    return (np.abs(a) if positive else a).astype(dtype)


def _compare(got, want, dtype):
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **_tol(dtype))


SGD_CASES = [
    {"lr": 0.1},
    {"lr": 0.1, "weight_decay": 0.01},
    {"lr": 0.1, "momentum": 0.9},
    {"lr": 0.1, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.05},
    {"lr": 0.05, "momentum": 0.8, "nesterov": True},
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("hyper", SGD_CASES, ids=str)
def test_sgd(ck, rng, shape, dtype, hyper):
    p, p_ref = _state(rng, shape, dtype), None
    p_ref = p.copy()
    buf = np.zeros(shape, dtype) if hyper.get("momentum") else None
    buf_ref = None if buf is None else buf.copy()
    for step in range(1, 4):
        g = _state(rng, shape, dtype)
        p_new, buf_new = reference.sgd_update(np, p_ref, g, buf_ref, first_step=step == 1,
                                              **hyper)
        p_ref = p_new.astype(dtype)
        buf_ref = None if buf_new is None else buf_new.astype(dtype)
        ck.sgd_update(p, g, buf, first_step=step == 1, **hyper)
        _compare([p] + ([] if buf is None else [buf]),
                 [p_ref] + ([] if buf is None else [buf_ref]), dtype)


ADAM_CASES = [
    {"lr": 1e-3},
    {"lr": 1e-2, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.1},
    {"lr": 1e-2, "weight_decay": 0.1, "decoupled": True},
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("hyper", ADAM_CASES, ids=str)
def test_adam(ck, rng, shape, dtype, hyper):
    p = _state(rng, shape, dtype)
    m, v = np.zeros(shape, dtype), np.zeros(shape, dtype)
    ref = [p.copy(), m.copy(), v.copy()]
    for step in range(1, 4):
        g = _state(rng, shape, dtype)
        ref = [a.astype(dtype) for a in reference.adam_update(np, *ref[:1], g, *ref[1:],
                                                             step=step, **hyper)]
        ck.adam_update(p, g, m, v, step=step, **hyper)
        _compare([p, m, v], ref, dtype)


RMSPROP_CASES = [
    {"lr": 1e-2},
    {"lr": 1e-2, "alpha": 0.9, "weight_decay": 0.1},
    {"lr": 1e-2, "momentum": 0.9},
    {"lr": 1e-2, "centered": True},
    {"lr": 1e-2, "momentum": 0.5, "centered": True, "weight_decay": 0.01},
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("hyper", RMSPROP_CASES, ids=str)
def test_rmsprop(ck, rng, shape, dtype, hyper):
    p = _state(rng, shape, dtype)
    sq = np.zeros(shape, dtype)
    buf = np.zeros(shape, dtype) if hyper.get("momentum") else None
    ga = np.zeros(shape, dtype) if hyper.get("centered") else None
    ref = [p.copy(), sq.copy(), None if buf is None else buf.copy(),
           None if ga is None else ga.copy()]
    for _ in range(3):
        g = _state(rng, shape, dtype)
        out = reference.rmsprop_update(np, ref[0], g, ref[1], ref[2], ref[3], **hyper)
        ref = [None if a is None else a.astype(dtype) for a in out]
        ck.rmsprop_update(p, g, sq, buf, ga, **hyper)
        got = [p, sq, buf, ga]
        _compare([a for a in got if a is not None], [a for a in ref if a is not None], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("hyper", [{"lr": 0.1}, {"lr": 0.1, "lr_decay": 0.5, "weight_decay": 0.1,
                                                      "eps": 1e-6}], ids=str)
def test_adagrad(ck, rng, shape, dtype, hyper):
    p = _state(rng, shape, dtype)
    s = np.full(shape, 0.1, dtype)
    ref = [p.copy(), s.copy()]
    for step in range(1, 4):
        g = _state(rng, shape, dtype)
        ref = [a.astype(dtype) for a in reference.adagrad_update(np, ref[0], g, ref[1],
                                                                step=step, **hyper)]
        ck.adagrad_update(p, g, s, step=step, **hyper)
        _compare([p, s], ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("hyper", [{}, {"lr": 0.5, "rho": 0.8, "eps": 1e-5,
                                                "weight_decay": 0.1}], ids=str)
def test_adadelta(ck, rng, shape, dtype, hyper):
    p = _state(rng, shape, dtype)
    v, u = np.zeros(shape, dtype), np.zeros(shape, dtype)
    ref = [p.copy(), v.copy(), u.copy()]
    for _ in range(3):
        g = _state(rng, shape, dtype)
        ref = [a.astype(dtype) for a in reference.adadelta_update(np, ref[0], g, ref[1],
                                                                 ref[2], **hyper)]
        ck.adadelta_update(p, g, v, u, **hyper)
        _compare([p, v, u], ref, dtype)


def test_grid_stride_covers_every_element(tiny_grid, rng):
    ck = tiny_grid
    p = rng.standard_normal((5, 7))
    g = rng.standard_normal((5, 7))
    m, v = np.zeros_like(p), np.zeros_like(p)
    ref = reference.adam_update(np, p, g, m, v, step=1, lr=0.1)
    ck.adam_update(p, g, m, v, step=1, lr=0.1)
    np.testing.assert_allclose(p, ref[0], 1e-13)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_gradient_nan_propagates(ck):
    p = np.ones(3, np.float32)
    g = np.array([np.nan, np.inf, 1.0], np.float32)
    m, v = np.zeros(3, np.float32), np.zeros(3, np.float32)
    ck.adam_update(p, g, m, v, step=1, lr=0.1)
    assert np.isnan(p[:2]).all() and np.isfinite(p[2])


class TestLauncherChecks:
    def test_state_shape(self, ck):
        p = np.zeros((2, 3), np.float32)
        with pytest.raises(ValueError, match="exp_avg"):
            ck.adam_update(p, p.copy(), np.zeros(6, np.float32), p.copy(), step=1, lr=0.1)

    def test_state_dtype(self, ck):
        p = np.zeros(3, np.float32)
        with pytest.raises(TypeError, match="grad"):
            ck.sgd_update(p, np.zeros(3), None, lr=0.1)

    def test_missing_buffers(self, ck):
        p = np.zeros(3, np.float32)
        with pytest.raises(ValueError, match="momentum_buffer"):
            ck.sgd_update(p, p.copy(), None, lr=0.1, momentum=0.9)
        with pytest.raises(ValueError, match="grad_avg"):
            ck.rmsprop_update(p, p.copy(), p.copy(), None, None, lr=0.1, centered=True)
