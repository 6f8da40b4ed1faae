"""Optimizers against their update rules written out by hand, against torch.optim, and
their options (l1, max_norm, clip_grad_norm), guards, state dicts and validation.

Every trajectory test runs on the fused and the unfused NumPy backend; the hand-written
rules also run on ``array_api_strict`` through the generic backend.
"""

from __future__ import annotations

import ast
import copy
import json
import math
import pathlib

import numpy as np
import pytest

import dualnn
from dualnn import optim
from dualnn.backend import ArrayAPIBackend, NumpyBackend
from dualnn.errors import ConfigurationError, NonFiniteError, ShapeError
from dualnn.parameter import Parameter

STEPS = 6
SHAPES = {"0.weight": (4, 3), "0.bias": (4,), "2.weight": (2, 4)}


# ---------------------------------------------------------------------------------------
# backends and parameters
# ---------------------------------------------------------------------------------------

def _strict_backend():
    xp = pytest.importorskip("array_api_strict")
    return ArrayAPIBackend(xp)


BACKEND_FACTORIES = {
    "numpy-fused": lambda: NumpyBackend(fused=True),
    "numpy-unfused": lambda: NumpyBackend(fused=False),
    "array_api_strict": _strict_backend,
}
NUMPY_BACKENDS = ["numpy-fused", "numpy-unfused"]


def host_values(seed, dtype):
    """Initial parameter values as host arrays, with rows of varied norm."""
    rng = np.random.default_rng(seed)
    return {name: rng.normal(scale=1.5, size=shape).astype(dtype)
            for name, shape in SHAPES.items()}


def host_grads(seed, dtype, steps=STEPS):
    """A sequence of gradients (one dict per step) as host arrays."""
    rng = np.random.default_rng(seed + 1000)
    return [{name: rng.normal(size=shape).astype(dtype) for name, shape in SHAPES.items()}
            for _ in range(steps)]


def make_params(backend, values):
    dtype = next(iter(values.values())).dtype.name
    return [Parameter(backend.asarray(v.copy(), dtype=dtype), backend, name)
            for name, v in values.items()]


def set_grads(params, grads):
    for p in params:
        p.backend.assign(p.grad, p.backend.asarray(grads[p.name], dtype=p.dtype))


def to_host(params):
    return {p.name: np.array(p.backend.to_host(p.data)) for p in params}


def run_dualnn(cls, kwargs, backend, values, grad_seq, lr_schedule=None):
    params = make_params(backend, values)
    opt = cls(params, **kwargs)
    trajectory = []
    for t, grads in enumerate(grad_seq):
        if lr_schedule is not None:
            opt.lr = lr_schedule(t)
        set_grads(params, grads)
        opt.step()
        trajectory.append(to_host(params))
    return trajectory, params, opt


# ---------------------------------------------------------------------------------------
# the update rules, by hand, in plain NumPy (independent of kernels/reference.py)
# ---------------------------------------------------------------------------------------

def hand_sgd(p, g, st, t, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
    g = g + weight_decay * p
    if momentum:
        st["buf"] = g.copy() if t == 1 else momentum * st["buf"] + (1 - dampening) * g
        d = g + momentum * st["buf"] if nesterov else st["buf"]
    else:
        d = g
    return p - lr * d


def hand_adam(p, g, st, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
              decoupled=False):
    b1, b2 = betas
    if decoupled:
        p = p * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    st["m"] = b1 * st.get("m", 0 * p) + (1 - b1) * g
    st["v"] = b2 * st.get("v", 0 * p) + (1 - b2) * g * g
    m_hat = st["m"] / (1 - b1 ** t)
    v_hat = st["v"] / (1 - b2 ** t)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps)


def hand_adamw(p, g, st, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
    return hand_adam(p, g, st, t, lr, betas, eps, weight_decay, decoupled=True)


def hand_rmsprop(p, g, st, t, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False):
    g = g + weight_decay * p
    st["v"] = alpha * st.get("v", 0 * p) + (1 - alpha) * g * g
    if centered:
        st["ga"] = alpha * st.get("ga", 0 * p) + (1 - alpha) * g
        denom = np.sqrt(st["v"] - st["ga"] ** 2) + eps
    else:
        denom = np.sqrt(st["v"]) + eps
    if momentum > 0:
        st["buf"] = momentum * st.get("buf", 0 * p) + g / denom
        return p - lr * st["buf"]
    return p - lr * g / denom


def hand_adagrad(p, g, st, t, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10):
    g = g + weight_decay * p
    st["s"] = st.get("s", 0 * p) + g * g
    clr = lr / (1 + (t - 1) * lr_decay)
    return p - clr * g / (np.sqrt(st["s"]) + eps)


def hand_adadelta(p, g, st, t, lr, rho=0.9, eps=1e-6, weight_decay=0.0):
    g = g + weight_decay * p
    st["v"] = rho * st.get("v", 0 * p) + (1 - rho) * g * g
    delta = np.sqrt(st.get("u", 0 * p) + eps) / np.sqrt(st["v"] + eps) * g
    st["u"] = rho * st.get("u", 0 * p) + (1 - rho) * delta * delta
    return p - lr * delta


HAND = {"SGD": hand_sgd, "Adam": hand_adam, "AdamW": hand_adamw, "RMSprop": hand_rmsprop,
        "Adagrad": hand_adagrad, "Adadelta": hand_adadelta}
DEFAULT_LR = {"SGD": 1e-3, "Adam": 1e-3, "AdamW": 1e-3, "RMSprop": 1e-2, "Adagrad": 1e-2,
              "Adadelta": 1.0}
OPTIONS = ("l1", "max_norm", "clip_grad_norm")


def run_hand(name, kwargs, values, grad_seq, lr_schedule=None):
    """The trajectory by hand, with the options in their documented order."""
    kwargs = dict(kwargs)
    l1 = kwargs.pop("l1", 0.0)
    max_norm = kwargs.pop("max_norm", None)
    clip = kwargs.pop("clip_grad_norm", None)
    lr = kwargs.pop("lr", DEFAULT_LR[name])
    params = {k: v.copy() for k, v in values.items()}
    states = {k: {} for k in values}
    trajectory = []
    for t, grads in enumerate(grad_seq, start=1):
        if lr_schedule is not None:
            lr = lr_schedule(t - 1)
        grads = dict(grads)
        if clip is not None:
            total = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2))
                                  for g in grads.values()))
            coef = min(1.0, clip / (total + 1e-6))
            if coef < 1.0:
                grads = {k: g * coef for k, g in grads.items()}
        for k, value in params.items():
            g = grads[k]
            if l1:
                g = g + l1 * np.sign(value)
            p = HAND[name](value, g, states[k], t, lr, **kwargs)
            if max_norm is not None and p.ndim == 2:
                norms = np.sqrt(np.sum(p * p, axis=1, keepdims=True))
                p = np.where(norms > max_norm, p * (max_norm / norms), p)
            params[k] = p.astype(values[k].dtype)
        trajectory.append({k: v.copy() for k, v in params.items()})
    return trajectory


# Every optimizer and option combination checked by hand and against torch.
CASES = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "weight_decay": 0.05}),
    ("SGD", {"lr": 0.1, "momentum": 0.9}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("SGD", {"lr": 0.05, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.02}),
    ("Adam", {}),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1}),
    ("AdamW", {"lr": 0.01}),
    ("AdamW", {"lr": 0.01, "betas": (0.85, 0.99), "weight_decay": 0.3}),
    ("RMSprop", {}),
    ("RMSprop", {"lr": 0.01, "alpha": 0.9, "weight_decay": 0.05}),
    ("RMSprop", {"lr": 0.01, "centered": True}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.9}),
    ("RMSprop", {"lr": 0.005, "momentum": 0.8, "centered": True, "weight_decay": 0.01}),
    ("Adagrad", {}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.1, "weight_decay": 0.02}),
    ("Adadelta", {}),
    ("Adadelta", {"lr": 0.5, "rho": 0.8, "eps": 1e-5, "weight_decay": 0.05}),
    # the documented options, alone and together
    ("SGD", {"lr": 0.1, "momentum": 0.9, "l1": 0.05}),
    ("SGD", {"lr": 0.5, "max_norm": 1.0}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "clip_grad_norm": 0.5}),
    ("Adam", {"lr": 0.05, "l1": 0.01, "max_norm": 1.2, "clip_grad_norm": 1.0}),
    ("AdamW", {"lr": 0.05, "clip_grad_norm": 100.0, "max_norm": 2.0}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.5, "centered": True, "l1": 0.01,
                 "clip_grad_norm": 0.3, "max_norm": 1.5}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.05, "l1": 0.02, "max_norm": 1.0}),
    ("Adadelta", {"l1": 0.01, "clip_grad_norm": 0.7, "max_norm": 1.0}),
]


def case_id(case):
    name, kwargs = case
    return name + "-" + ",".join(f"{k}={v}" for k, v in kwargs.items())


def assert_trajectories_close(actual, expected, rtol, atol):
    assert len(actual) == len(expected)
    for t, (a, e) in enumerate(zip(actual, expected), start=1):
        for name in e:
            np.testing.assert_allclose(a[name], e[name], rtol=rtol, atol=atol,
                                       err_msg=f"step {t}, {name}")


# ---------------------------------------------------------------------------------------
# update rules by hand
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("backend_name", NUMPY_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_hand_written_rule(case, backend_name, dtype):
    name, kwargs = case
    values, grad_seq = host_values(1, dtype), host_grads(1, dtype)
    actual, params, _ = run_dualnn(optim.get(name), kwargs,
                                   BACKEND_FACTORIES[backend_name](), values, grad_seq)
    expected = run_hand(name, kwargs, values, grad_seq)
    tol = (1e-10, 1e-12) if dtype == "float64" else (2e-5, 2e-6)
    assert_trajectories_close(actual, expected, *tol)
    for p in params:
        assert p.data.dtype == np.dtype(dtype)
        assert p.state["step"] == STEPS and type(p.state["step"]) is int


STRICT_CASES = [
    ("SGD", {"lr": 0.1, "momentum": 0.9}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("Adam", {"lr": 0.01, "weight_decay": 0.1}),
    ("AdamW", {"lr": 0.01}),
    ("RMSprop", {"lr": 0.005, "momentum": 0.8, "centered": True, "weight_decay": 0.01}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.1, "weight_decay": 0.02}),
    ("Adadelta", {"weight_decay": 0.05}),
    ("Adam", {"lr": 0.05, "l1": 0.01, "max_norm": 1.2, "clip_grad_norm": 1.0}),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", STRICT_CASES, ids=case_id)
def test_array_api_strict_matches_hand_written_rule(case, dtype):
    name, kwargs = case
    backend = _strict_backend()
    values, grad_seq = host_values(2, dtype), host_grads(2, dtype)
    actual, params, opt = run_dualnn(optim.get(name), kwargs, backend, values, grad_seq)
    expected = run_hand(name, kwargs, values, grad_seq)
    tol = (1e-10, 1e-12) if dtype == "float64" else (2e-5, 2e-6)
    assert_trajectories_close(actual, expected, *tol)
    for p in params:
        assert backend.owns(p.data)
        for key in opt.state_keys:
            if key in p.state:
                assert backend.owns(p.state[key])
    opt.zero_grad()
    assert all(not np.any(backend.to_host(p.grad)) for p in params)


@pytest.mark.parametrize("backend_name", NUMPY_BACKENDS)
def test_learning_rate_can_change_between_steps(backend_name):
    schedule = [0.1, 0.1, 0.05, 0.05, 0.01, 0.2].__getitem__
    kwargs = {"momentum": 0.9, "weight_decay": 0.01}
    values, grad_seq = host_values(3, "float64"), host_grads(3, "float64")
    actual, _, opt = run_dualnn(optim.SGD, kwargs, BACKEND_FACTORIES[backend_name](),
                                values, grad_seq, lr_schedule=schedule)
    expected = run_hand("SGD", kwargs, values, grad_seq, lr_schedule=schedule)
    assert_trajectories_close(actual, expected, 1e-12, 1e-14)
    assert opt.lr == 0.2 and opt.get_config()["lr"] == 0.2


@pytest.mark.parametrize("backend_name", NUMPY_BACKENDS)
def test_classic_momentum_form_equals_torch_form(backend_name):
    """V = gamma V + eta grad; W -= V  is  buf = mu buf + g; W -= lr buf  for constant eta."""
    eta, gamma = 0.05, 0.9
    values, grad_seq = host_values(4, "float64"), host_grads(4, "float64")
    classic = {k: v.copy() for k, v in values.items()}
    velocity = {k: np.zeros_like(v) for k, v in values.items()}
    torch_form = {k: v.copy() for k, v in values.items()}
    buf = {k: np.zeros_like(v) for k, v in values.items()}
    actual, _, _ = run_dualnn(optim.SGD, {"lr": eta, "momentum": gamma},
                              BACKEND_FACTORIES[backend_name](), values, grad_seq)
    for grads, got in zip(grad_seq, actual):
        for k, g in grads.items():
            velocity[k] = gamma * velocity[k] + eta * g
            classic[k] = classic[k] - velocity[k]
            buf[k] = gamma * buf[k] + g          # zero start: the first buf is g, as torch
            torch_form[k] = torch_form[k] - eta * buf[k]
            np.testing.assert_allclose(torch_form[k], classic[k], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(got[k], classic[k], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------
# against torch.optim
# ---------------------------------------------------------------------------------------

def run_torch(name, kwargs, values, grad_seq):
    torch = pytest.importorskip("torch")
    kwargs = dict(kwargs)
    l1 = kwargs.pop("l1", 0.0)
    max_norm = kwargs.pop("max_norm", None)
    clip = kwargs.pop("clip_grad_norm", None)
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in values.items()}
    opt = getattr(torch.optim, name)(list(tensors.values()), **kwargs)
    trajectory = []
    for grads in grad_seq:
        for k, t in tensors.items():
            t.grad = torch.tensor(grads[k])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(tensors.values()), clip)
        with torch.no_grad():
            if l1:
                for t in tensors.values():
                    t.grad.add_(l1 * torch.sign(t))
            opt.step()
            if max_norm is not None:
                for t in tensors.values():
                    if t.dim() == 2:
                        norms = t.norm(dim=1, keepdim=True)
                        t.mul_(torch.where(norms > max_norm, max_norm / norms,
                                           torch.ones_like(norms)))
        trajectory.append({k: t.detach().numpy().copy() for k, t in tensors.items()})
    return trajectory


@pytest.mark.parametrize("backend_name", NUMPY_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_torch(case, backend_name):
    pytest.importorskip("torch")
    name, kwargs = case
    values, grad_seq = host_values(5, "float64"), host_grads(5, "float64")
    actual, _, _ = run_dualnn(optim.get(name), kwargs, BACKEND_FACTORIES[backend_name](),
                              values, grad_seq)
    expected = run_torch(name, kwargs, values, grad_seq)
    assert_trajectories_close(actual, expected, 1e-6, 1e-12)


def test_torch_defaults_match():
    """The constructors' defaults are torch.optim's."""
    torch = pytest.importorskip("torch")
    t = torch.zeros(2, requires_grad=True)
    p = Parameter(np.zeros(2), NumpyBackend(fused=False), "w")
    for name in ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta"):
        ours = optim.get(name)([p]).get_config()
        theirs = getattr(torch.optim, name)([t]).defaults
        for key, value in ours.items():
            if key in OPTIONS:
                continue
            expected = theirs[key]
            if key == "betas":
                expected = list(expected)
            assert value == expected, (name, key)


# ---------------------------------------------------------------------------------------
# the documented options
# ---------------------------------------------------------------------------------------

@pytest.fixture(params=NUMPY_BACKENDS)
def backend(request):
    return BACKEND_FACTORIES[request.param]()


def test_l1_adds_sign_to_gradient_and_leaves_grad(backend):
    w = np.array([[1.0, -2.0, 0.0], [0.5, -0.25, 3.0]])
    p = Parameter(backend.asarray(w.copy()), backend, "0.weight")
    opt = optim.SGD([p], lr=0.1, l1=0.2)
    p.grad[...] = 1.0
    opt.step()
    np.testing.assert_allclose(p.data, w - 0.1 * (1.0 + 0.2 * np.sign(w)))
    np.testing.assert_array_equal(p.grad, np.ones_like(w))


def test_max_norm_rescales_long_rows_only(backend):
    w = np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])  # row norms 5, 0.5, 0
    b = np.array([10.0, -10.0, 10.0])
    pw = Parameter(backend.asarray(w.copy()), backend, "0.weight")
    pb = Parameter(backend.asarray(b.copy()), backend, "0.bias")
    opt = optim.SGD([pw, pb], lr=0.1, max_norm=1.0)
    opt.step()  # zero gradients: only the constraint acts
    np.testing.assert_allclose(pw.data[0], [0.6, 0.8])
    np.testing.assert_array_equal(pw.data[1:], w[1:])
    np.testing.assert_array_equal(pb.data, b)
    norms = np.linalg.norm(pw.data, axis=1)
    assert np.all(norms <= 1.0 + 1e-12)


def test_clip_grad_norm_scales_all_gradients_together(backend):
    g1, g2 = np.array([[3.0, 0.0]]), np.array([4.0])  # global norm 5
    p1 = Parameter(backend.asarray(np.zeros((1, 2))), backend, "0.weight")
    p2 = Parameter(backend.asarray(np.zeros(1)), backend, "0.bias")
    opt = optim.SGD([p1, p2], lr=1.0, clip_grad_norm=1.0)
    p1.grad[...], p2.grad[...] = g1, g2
    opt.step()
    coef = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(p1.data, -g1 * coef, rtol=1e-12)
    np.testing.assert_allclose(p2.data, -g2 * coef, rtol=1e-12)
    np.testing.assert_array_equal(p1.grad, g1)  # the gradient itself is left alone
    # under the bound nothing is scaled
    opt.clip_grad_norm = 10.0
    opt.step()
    np.testing.assert_allclose(p1.data, -g1 * coef - g1, rtol=1e-12)


def test_clip_grad_norm_function_clips_in_place(backend):
    p1 = Parameter(backend.asarray(np.zeros((1, 2))), backend, "a")
    p2 = Parameter(backend.asarray(np.zeros(1)), backend, "b")
    p1.grad[...], p2.grad[...] = [[3.0, 0.0]], [4.0]
    total = optim.clip_grad_norm_([p1, p2], 2.5)
    assert total == pytest.approx(5.0)
    np.testing.assert_allclose(p1.grad, [[3.0 * 2.5 / (5 + 1e-6), 0.0]])
    np.testing.assert_allclose(p2.grad, [4.0 * 2.5 / (5 + 1e-6)])


def test_zero_grad(backend):
    params = make_params(backend, host_values(6, "float32"))
    set_grads(params, host_grads(6, "float32")[0])
    opt = optim.Adam(params)
    opt.zero_grad()
    for p in params:
        assert p.grad.dtype == np.float32
        np.testing.assert_array_equal(p.grad, 0)


# ---------------------------------------------------------------------------------------
# non-finite guard
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop", "Adagrad", "Adadelta"])
def test_check_finite_raises_and_changes_nothing(backend, name, bad):
    kwargs = {"momentum": 0.9} if name in ("SGD", "RMSprop") else {}
    values, grad_seq = host_values(7, "float64"), host_grads(7, "float64", steps=3)
    _, params, opt = run_dualnn(optim.get(name), kwargs, backend, values, grad_seq)
    before = to_host(params)
    state_before = copy.deepcopy([p.state for p in params])
    grads = dict(grad_seq[0])
    grads["2.weight"] = grads["2.weight"].copy()
    grads["2.weight"][1, 2] = bad
    set_grads(params, grads)
    with pytest.raises(NonFiniteError, match=r"gradient of 2\.weight") as info:
        opt.step(check_finite=True)
    assert info.value.layer == "2"
    assert isinstance(info.value, dualnn.errors.DualnnError)
    after = to_host(params)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])
    for p, old in zip(params, state_before):
        assert p.state.keys() == old.keys()
        for key, value in old.items():
            np.testing.assert_array_equal(p.state[key], value)


def test_check_finite_layer_of_unprefixed_name(backend):
    p = Parameter(backend.asarray(np.zeros(2)), backend, "w")
    p.grad[...] = [1.0, np.nan]
    with pytest.raises(NonFiniteError) as info:
        optim.SGD([p]).step(check_finite=True)
    assert info.value.layer == "w"
    assert p.state == {}


# ---------------------------------------------------------------------------------------
# state dicts and configs
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES[:18], ids=case_id)
def test_state_dict_round_trip_continues_identically(backend, case):
    name, kwargs = case
    cls = optim.get(name)
    values, grad_seq = host_values(8, "float64"), host_grads(8, "float64", steps=6)
    first, second = grad_seq[:3], grad_seq[3:]
    # uninterrupted
    params = make_params(backend, values)
    opt = cls(params, **kwargs)
    for grads in first:
        set_grads(params, grads)
        opt.step()
    saved_values = to_host(params)
    sd = opt.state_dict()
    sd_copy = copy.deepcopy(sd)
    for grads in second:
        set_grads(params, grads)
        opt.step()
    expected = to_host(params)
    assert_state_dicts_equal(sd, sd_copy)  # later steps did not touch the saved arrays
    # rebuilt from the saved dict, as a checkpoint would (hyperparameters through JSON)
    hyper = json.loads(json.dumps(sd["hyperparameters"]))
    new_params = make_params(backend, saved_values)
    new_opt = optim.get(sd["type"])(new_params, **hyper)
    new_opt.load_state_dict({**sd, "state": {str(i): e for i, e in sd["state"].items()}})
    for grads in second:
        set_grads(new_params, grads)
        new_opt.step()
    got = to_host(new_params)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])
    assert_state_dicts_equal(sd, sd_copy)  # loading copied, did not alias
    assert new_params[0].state["step"] == 6


def assert_state_dicts_equal(a, b):
    assert a["type"] == b["type"] and a["hyperparameters"] == b["hyperparameters"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert a["state"][i].keys() == b["state"][i].keys()
        for key in a["state"][i]:
            np.testing.assert_array_equal(a["state"][i][key], b["state"][i][key])


def test_state_dict_format(backend):
    params = make_params(backend, host_values(9, "float32"))
    opt = optim.Adam(params, lr=0.01, betas=(0.8, 0.9), clip_grad_norm=2.0)
    sd = opt.state_dict()
    assert sd["type"] == "Adam"
    assert sd["state"] == {0: {}, 1: {}, 2: {}}  # one entry per parameter, lazy state
    json.dumps(sd["hyperparameters"])
    assert sd["hyperparameters"] == {"lr": 0.01, "betas": [0.8, 0.9], "eps": 1e-8,
                                     "weight_decay": 0.0, "l1": 0.0, "max_norm": None,
                                     "clip_grad_norm": 2.0}
    set_grads(params, host_grads(9, "float32")[0])
    opt.step()
    sd = opt.state_dict()
    for i, p in enumerate(params):
        entry = sd["state"][i]
        assert set(entry) == {"step", "exp_avg", "exp_avg_sq"} and entry["step"] == 1
        assert isinstance(entry["exp_avg"], np.ndarray)
        assert entry["exp_avg"].shape == p.shape and entry["exp_avg"].dtype == np.float32


def test_state_dict_on_array_api_strict_is_host_numpy():
    backend = _strict_backend()
    params = make_params(backend, host_values(10, "float32"))
    opt = optim.SGD(params, lr=0.1, momentum=0.9)
    set_grads(params, host_grads(10, "float32")[0])
    opt.step()
    sd = opt.state_dict()
    assert isinstance(sd["state"][0]["momentum_buffer"], np.ndarray)
    other = make_params(backend, host_values(10, "float32"))
    optim.SGD(other, lr=0.1, momentum=0.9).load_state_dict(sd)
    assert backend.owns(other[0].state["momentum_buffer"])


@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop"])
def test_state_moves_with_parameter_between_backends(name):
    """Optimizer state lives in p.state, so Parameter.to() carries it to another backend."""
    kwargs = {"lr": 0.05, "momentum": 0.9} if name != "Adam" else {"lr": 0.05}
    values, grad_seq = host_values(13, "float32"), host_grads(13, "float32")
    expected, _, _ = run_dualnn(optim.get(name), kwargs, NumpyBackend(fused=False), values,
                                grad_seq)
    strict = _strict_backend()
    params = make_params(NumpyBackend(fused=True), values)
    opt = optim.get(name)(params, **kwargs)
    for t, grads in enumerate(grad_seq):
        if t == 3:
            for p in params:
                p.to(strict)
        set_grads(params, grads)
        opt.step()
    for p in params:
        assert strict.owns(p.data)
        assert all(strict.owns(v) for k, v in p.state.items() if k != "step")
        np.testing.assert_allclose(strict.to_host(p.data), expected[-1][p.name], rtol=1e-6)


def _stepped_rmsprop(backend):
    values, grad_seq = host_values(11, "float64"), host_grads(11, "float64", steps=2)
    _, params, opt = run_dualnn(optim.RMSprop, {"momentum": 0.9, "centered": True},
                                backend, values, grad_seq)
    return params, opt


def _corruptions():
    def wrong_type(sd):
        sd["type"] = "Adam"

    def lowercase_type(sd):
        sd["type"] = "rmsprop"

    def too_few(sd):
        del sd["state"][2]

    def too_many(sd):
        sd["state"][3] = {}

    def bad_index(sd):
        sd["state"]["x"] = sd["state"].pop(2)

    def wrong_shape(sd):
        sd["state"][1]["square_avg"] = np.zeros((5,))

    def wrong_dtype(sd):
        sd["state"][2]["grad_avg"] = sd["state"][2]["grad_avg"].astype(np.float32)

    def unknown_key(sd):
        sd["state"][0]["exp_avg"] = sd["state"][0]["square_avg"]

    def bad_step(sd):
        sd["state"][0]["step"] = -1

    def not_an_array(sd):
        sd["state"][0]["square_avg"] = [1.0, 2.0]

    def bad_hyperparameter(sd):
        sd["hyperparameters"]["alpha"] = -0.5

    def unknown_hyperparameter(sd):
        sd["hyperparameters"]["betas"] = [0.9, 0.99]

    def missing_key(sd):
        del sd["hyperparameters"]

    return {f.__name__: f for f in (
        wrong_type, lowercase_type, too_few, too_many, bad_index, wrong_shape, wrong_dtype,
        unknown_key, bad_step, not_an_array, bad_hyperparameter, unknown_hyperparameter,
        missing_key)}


CORRUPTIONS = _corruptions()


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_load_state_dict_rejects_mismatch_without_changes(backend, corruption):
    params, opt = _stepped_rmsprop(backend)
    sd = opt.state_dict()
    sd["hyperparameters"]["lr"] = 0.5  # a change that must not be applied either
    sd["state"][0]["square_avg"] = sd["state"][0]["square_avg"] + 1.0
    CORRUPTIONS[corruption](sd)
    before_state = copy.deepcopy([p.state for p in params])
    before_objects = [dict(p.state) for p in params]
    expected_error = ShapeError if corruption in ("wrong_shape", "wrong_dtype") \
        else ConfigurationError
    with pytest.raises(expected_error) as info:
        opt.load_state_dict(sd)
    if corruption == "wrong_shape":
        assert "(5,)" in str(info.value) and "(4,)" in str(info.value)
        assert "square_avg" in str(info.value) and "0.bias" in str(info.value)
    if corruption == "wrong_dtype":
        assert "float32" in str(info.value) and "float64" in str(info.value)
    assert opt.lr == 1e-2
    for p, old, objects in zip(params, before_state, before_objects):
        assert p.state.keys() == old.keys()
        for key in old:
            assert p.state[key] is objects[key]
            np.testing.assert_array_equal(p.state[key], old[key])


def test_load_state_dict_into_shapes_of_another_model(backend):
    _, opt = _stepped_rmsprop(backend)
    other = [Parameter(backend.asarray(np.zeros((4, 3))), backend, "0.weight")]
    with pytest.raises(ConfigurationError, match="3 parameter"):
        optim.RMSprop(other).load_state_dict(opt.state_dict())


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta"])
def test_get_config_rebuilds(backend, name):
    params = make_params(backend, host_values(12, "float32"))
    opt = optim.get(name)(params, l1=0.01, max_norm=3.0, clip_grad_norm=1.0)
    config = json.loads(json.dumps(opt.get_config()))
    again = type(opt)(params, **config)
    assert again.get_config() == opt.get_config()
    assert config["l1"] == 0.01 and config["max_norm"] == 3.0
    assert config["clip_grad_norm"] == 1.0
    assert name in repr(opt)


def test_adamw_default_weight_decay():
    p = Parameter(np.zeros(2), NumpyBackend(fused=False), "w")
    assert optim.AdamW([p]).weight_decay == 1e-2
    assert optim.Adam([p]).weight_decay == 0.0
    assert optim.AdamW([p]).betas == (0.9, 0.999)


def test_registry_lookup():
    for name, cls in [("sgd", optim.SGD), ("adam", optim.Adam), ("adamw", optim.AdamW),
                      ("rmsprop", optim.RMSprop), ("adagrad", optim.Adagrad),
                      ("adadelta", optim.Adadelta)]:
        assert optim.get(name) is cls
        assert optim.get(name.upper()) is cls
        assert optim.get(cls.__name__) is cls
        assert optim.get(cls) is cls
    with pytest.raises(ConfigurationError, match="unknown optimizer 'lbfgs'"):
        optim.get("lbfgs")
    with pytest.raises(ConfigurationError):
        optim.get(3)


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------

BAD_HYPERPARAMETERS = [
    ("SGD", {"lr": -0.1}),
    ("SGD", {"lr": float("nan")}),
    ("SGD", {"lr": "0.1"}),
    ("SGD", {"momentum": -0.5}),
    ("SGD", {"weight_decay": -1e-3}),
    ("SGD", {"nesterov": True}),
    ("SGD", {"nesterov": True, "momentum": 0.9, "dampening": 0.1}),
    ("SGD", {"nesterov": "yes", "momentum": 0.9}),
    ("Adam", {"lr": -1e-3}),
    ("Adam", {"betas": (1.0, 0.999)}),
    ("Adam", {"betas": (0.9, -0.1)}),
    ("Adam", {"betas": (0.9,)}),
    ("Adam", {"betas": 0.9}),
    ("Adam", {"eps": -1e-8}),
    ("Adam", {"weight_decay": -0.1}),
    ("AdamW", {"betas": (0.9, 1.5)}),
    ("AdamW", {"weight_decay": -0.01}),
    ("RMSprop", {"alpha": -0.1}),
    ("RMSprop", {"momentum": -0.1}),
    ("RMSprop", {"eps": -1.0}),
    ("RMSprop", {"centered": 2}),
    ("Adagrad", {"lr_decay": -0.1}),
    ("Adagrad", {"eps": -1e-10}),
    ("Adadelta", {"rho": 1.5}),
    ("Adadelta", {"rho": -0.1}),
    ("Adadelta", {"lr": -1.0}),
    ("SGD", {"l1": -0.1}),
    ("Adam", {"max_norm": 0.0}),
    ("Adam", {"max_norm": -1.0}),
    ("RMSprop", {"clip_grad_norm": 0.0}),
    ("Adagrad", {"clip_grad_norm": float("inf")}),
]


@pytest.mark.parametrize("case", BAD_HYPERPARAMETERS, ids=case_id)
def test_bad_hyperparameters_raise(case):
    name, kwargs = case
    p = Parameter(np.zeros(2), NumpyBackend(fused=False), "w")
    with pytest.raises(ConfigurationError) as info:
        optim.get(name)([p], **kwargs)
    assert name in str(info.value)
    assert isinstance(info.value, ValueError)


def test_options_are_keyword_only():
    p = Parameter(np.zeros(2), NumpyBackend(fused=False), "w")
    with pytest.raises(TypeError):
        optim.Adagrad([p], 0.1, 0.0, 0.0, 1e-10, 0.1)


def test_lr_setter_validates():
    p = Parameter(np.zeros(2), NumpyBackend(fused=False), "w")
    opt = optim.SGD([p], lr=0.1)
    with pytest.raises(ConfigurationError, match="lr"):
        opt.lr = -0.01
    assert opt.lr == 0.1
    opt.lr = 0
    assert opt.lr == 0.0


def test_bad_parameter_lists():
    backend = NumpyBackend(fused=False)
    p = Parameter(np.zeros(2), backend, "w")
    q = Parameter(np.zeros(3), backend, "b")
    with pytest.raises(ConfigurationError, match="empty"):
        optim.SGD([])
    with pytest.raises(ConfigurationError, match="empty"):
        optim.Adam(iter(()))
    with pytest.raises(ConfigurationError, match=r"params\[1\].*ndarray"):
        optim.SGD([p, np.zeros(2)])
    with pytest.raises(ConfigurationError, match="more than once"):
        optim.Adam([p, q, p])
    with pytest.raises(ConfigurationError, match="single Parameter"):
        optim.SGD(p)
    with pytest.raises(ConfigurationError, match="groups"):
        optim.SGD([{"params": [p]}])
    with pytest.raises(ConfigurationError):
        optim.SGD(5)


def test_params_keep_order_and_accept_generators():
    backend = NumpyBackend(fused=False)
    params = [Parameter(np.zeros(2), backend, f"{i}.weight") for i in range(4)]
    opt = optim.RMSprop(p for p in params)
    assert opt.params == params


# ---------------------------------------------------------------------------------------
# layering
# ---------------------------------------------------------------------------------------

def test_optim_never_imports_an_array_library_or_kernels():
    root = pathlib.Path(optim.__file__).parent
    forbidden = {"numpy", "cupy", "kernels", "numba"}
    files = sorted(root.rglob("*.py"))
    assert len(files) >= 7
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""] + [
                    f"{node.module or ''}.{alias.name}" for alias in node.names]
            else:
                continue
            for module in modules:
                parts = set(module.split("."))
                assert not parts & forbidden, f"{path.name} imports {module}"
