"""LARS and LAMB against their formulas written out plainly in NumPy float64."""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
from dualnn.errors import ConfigurationError
from dualnn.parameter import Parameter

SHAPES = {"0.weight": (5, 4), "0.bias": (5,), "1.weight": (3, 5)}


def _params(backend, dtype, values):
    return [Parameter(backend.store(np.asarray(v, dtype=dtype)), backend, name=name)
            for name, v in values.items()]


def _initial(seed=0, zero=()):
    rng = np.random.default_rng(seed)
    return {name: (np.zeros(shape) if name in zero else rng.standard_normal(shape))
            for name, shape in SHAPES.items()}


def _grads(steps, seed=1, zero=()):
    rng = np.random.default_rng(seed)
    return [{name: (np.zeros(shape) if name in zero else rng.standard_normal(shape))
             for name, shape in SHAPES.items()} for _ in range(steps)]


def _run(backend, opt_factory, init, grads, dtype):
    params = _params(backend, dtype, init)
    opt = opt_factory(params)
    for g in grads:
        for p in params:
            p.grad = backend.store(np.asarray(g[p.name], dtype=dtype))
        opt.step()
    return {p.name: backend.to_host(p.data).astype(np.float64) for p in params}


def _golden_lamb(init, grads, lr, b1, b2, eps, wd, exclude_1d):
    w = {k: v.copy() for k, v in init.items()}
    m = {k: np.zeros_like(v) for k, v in init.items()}
    v = {k: np.zeros_like(x) for k, x in init.items()}
    for t, g in enumerate(grads, start=1):
        for k in w:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            m_hat = m[k] / (1 - b1 ** t)
            v_hat = v[k] / (1 - b2 ** t)
            skip = exclude_1d and w[k].ndim == 1
            r = m_hat / (np.sqrt(v_hat) + eps) + (0.0 if skip else wd) * w[k]
            wn, rn = np.linalg.norm(w[k]), np.linalg.norm(r)
            phi = 1.0 if skip or wn == 0 or rn == 0 else wn / rn
            w[k] = w[k] - lr * phi * r
    return w


def _golden_lars(init, grads, lr, mu, wd, tc, eps, exclude_1d):
    w = {k: x.copy() for k, x in init.items()}
    buf = {k: np.zeros_like(x) for k, x in init.items()}
    for g in grads:
        for k in w:
            skip = exclude_1d and w[k].ndim == 1
            lam = 0.0 if skip else wd
            wn, gn = np.linalg.norm(w[k]), np.linalg.norm(g[k])
            local = 1.0 if skip or wn == 0 or gn == 0 else tc * wn / (gn + lam * wn + eps)
            buf[k] = mu * buf[k] + local * (g[k] + lam * w[k])
            w[k] = w[k] - lr * buf[k]
    return w


def _tol(dtype):
    return {"rtol": 2e-4, "atol": 2e-5} if dtype == "float32" else {"rtol": 1e-10, "atol": 1e-12}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("exclude_1d", [True, False])
@pytest.mark.parametrize("zero", [(), ("0.weight",), ("1.weight", "0.bias")],
                         ids=["normal", "zero-weight", "zero-params"])
def test_lamb_matches_formula(backend, dtype, exclude_1d, zero):
    init, grads = _initial(zero=zero), _grads(4)
    hyper = {"lr": 0.05, "betas": (0.9, 0.99), "eps": 1e-6, "weight_decay": 0.1}
    got = _run(backend, lambda ps: dn.optim.LAMB(ps, exclude_1d=exclude_1d, **hyper),
               init, grads, dtype)
    want = _golden_lamb(init, grads, 0.05, 0.9, 0.99, 1e-6, 0.1, exclude_1d)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], **_tol(dtype), err_msg=k)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("exclude_1d", [True, False])
@pytest.mark.parametrize("zero_w,zero_g", [((), ()), (("0.weight",), ()), ((), ("1.weight",))],
                         ids=["normal", "zero-weight", "zero-grad"])
def test_lars_matches_formula(backend, dtype, exclude_1d, zero_w, zero_g):
    init, grads = _initial(zero=zero_w), _grads(4, zero=zero_g)
    got = _run(backend, lambda ps: dn.optim.LARS(ps, lr=2.0, momentum=0.9, weight_decay=0.01,
                                                 trust_coefficient=0.02, eps=1e-8,
                                                 exclude_1d=exclude_1d),
               init, grads, dtype)
    want = _golden_lars(init, grads, 2.0, 0.9, 0.01, 0.02, 1e-8, exclude_1d)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], **_tol(dtype), err_msg=k)


def test_exclusion_changes_bias_updates(backend):
    init, grads = _initial(), _grads(2)
    with_ex = _run(backend, lambda ps: dn.optim.LAMB(ps, lr=0.1), init, grads, "float64")
    without = _run(backend, lambda ps: dn.optim.LAMB(ps, lr=0.1, exclude_1d=False), init,
                   grads, "float64")
    assert not np.allclose(with_ex["0.bias"], without["0.bias"])
    np.testing.assert_allclose(with_ex["0.weight"], without["0.weight"])


def test_lamb_weight_norm_scales_step():
    # phi = ||w|| / ||r||: doubling w (with the same gradients) doubles the first step
    backend = dn.backend.NumpyBackend()
    g = [{"w": np.full((4, 4), 0.5)}]
    steps = []
    for scale in (1.0, 2.0):
        p = [Parameter(backend.store(np.full((4, 4), scale)), backend, name="w")]
        opt = dn.optim.LAMB(p, lr=0.1, weight_decay=0.0)
        p[0].grad = backend.store(g[0]["w"])
        opt.step()
        steps.append(scale - p[0].data[0, 0])
    np.testing.assert_allclose(steps[1], 2 * steps[0], rtol=1e-6)


@pytest.mark.parametrize("cls,kwargs", [
    (dn.optim.LAMB, {"betas": (0.9, 1.0)}),
    (dn.optim.LAMB, {"weight_decay": -1}),
    (dn.optim.LAMB, {"exclude_1d": "yes"}),
    (dn.optim.LARS, {"lr": 1.0, "trust_coefficient": 0.0}),
    (dn.optim.LARS, {"lr": 1.0, "momentum": -0.1}),
])
def test_bad_hyperparameters_raise(cls, kwargs):
    backend = dn.backend.NumpyBackend()
    params = [Parameter(backend.zeros((2, 2)), backend, name="w")]
    with pytest.raises(ConfigurationError):
        cls(params, **kwargs)


@pytest.mark.parametrize("cls,kwargs", [(dn.optim.LAMB, {}), (dn.optim.LARS, {"lr": 1.0})])
def test_state_dict_round_trip_continues_identically(cls, kwargs):
    backend = dn.backend.NumpyBackend()
    init, grads = _initial(), _grads(4)

    def run(split):
        params = _params(backend, "float64", init)
        opt = cls(params, **kwargs)
        for i, g in enumerate(grads):
            if i == split:
                saved = opt.state_dict()
                opt = cls(params, **kwargs)
                opt.load_state_dict(saved)
            for p in params:
                p.grad = backend.store(g[p.name])
            opt.step()
        return [p.data.copy() for p in params]

    for a, b in zip(run(None), run(2)):
        np.testing.assert_array_equal(a, b)
    assert dn.optim.get("lamb") is dn.optim.LAMB and dn.optim.get("lars") is dn.optim.LARS


def test_hyperparameters_are_declared_once_with_their_defaults():
    import inspect

    for cls, want in [
        (dn.optim.LAMB, {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-6,
                         "weight_decay": 0.01, "exclude_1d": True}),
        (dn.optim.LARS, {"lr": inspect.Parameter.empty, "momentum": 0.9,
                         "weight_decay": 0.0, "trust_coefficient": 0.001, "eps": 1e-8,
                         "exclude_1d": True}),
    ]:
        assert "__init__" not in vars(cls) and "check_hyperparameters" not in vars(cls)
        signature = inspect.signature(cls).parameters
        assert {n: signature[n].default for n in want} == want
        assert tuple(cls.hyperparameters) == tuple(want)


def test_lars_needs_a_learning_rate():
    backend = dn.backend.NumpyBackend()
    params = [Parameter(backend.zeros((2, 2)), backend, name="w")]
    with pytest.raises(TypeError, match="lr"):
        dn.optim.LARS(params)
    assert dn.optim.LARS(params, 2.0).get_config()["lr"] == 2.0
