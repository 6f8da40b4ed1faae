"""Optimizer-update kernels: reference, CPU and CUDA-simulator twins from one set of
cases, then several-step, hypothesis and fallback checks.
"""

from __future__ import annotations

import numpy as np
import pytest
from dualnn.kernels import reference
from dualnn.kernels import reference as R
from hypothesis import given, settings
from hypothesis import strategies as st

from .cases import (
    CUDASIM,
    DEVICES,
    DTYPE_NAMES,
    device_kernels,
    tolerances,
)
from .cpu_cases import (
    DTYPES,
    FUSED,
    OPT_SHAPES,
    PROFILE,
    UNFUSED,
    assert_close,
    state_array,
)

# ------------------------------------------------------------ every device, one set of cases

CASE_UPDATES = [
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}, 1),
    ("adam", {"lr": 0.01, "weight_decay": 0.1, "decoupled": True}, 2),
    ("rmsprop", {"lr": 0.01, "momentum": 0.5, "centered": True}, 3),
    ("adagrad", {"lr": 0.1, "lr_decay": 0.1}, 1),
    ("adadelta", {"lr": 1.0, "weight_decay": 0.01}, 2),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("shape", [(1,), (5, 7)])
@pytest.mark.parametrize("name,hyper,n_state", CASE_UPDATES, ids=[c[0] for c in CASE_UPDATES])
def test_optimizer_twins_agree_on_every_device(device, shape, dtype, name, hyper, n_state):
    k = device_kernels(device)
    rng = np.random.default_rng(len(name))
    param = rng.standard_normal(shape).astype(dtype)
    grad = rng.standard_normal(shape).astype(dtype)
    grad.reshape(-1)[0] = 0.0
    state = [np.abs(rng.standard_normal(shape)).astype(dtype) for _ in range(n_state)]
    if name == "rmsprop":
        state[2][...] = 0  # grad_avg**2 <= square_avg: a valid centered state
    step = {"step": 2} if name in ("adam", "adagrad") else {}
    ref = getattr(R, f"{name}_update")
    if name == "rmsprop":
        want = ref(np, param, grad, state[0], state[1], state[2], **hyper)
        want = (want[0], want[1], want[2], want[3])
    else:
        want = ref(np, param, grad, *state, **step, **hyper)
    got = [param.copy()] + [s.copy() for s in state]
    getattr(k, f"{name}_update")(got[0], grad, *got[1:], **step, **hyper)
    rtol, atol = tolerances(dtype)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=rtol * 10, atol=atol * 10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,hyper,n_state", CASE_UPDATES, ids=[c[0] for c in CASE_UPDATES])
def test_one_launch_over_a_flat_buffer_equals_one_launch_per_parameter(device, name, hyper,
                                                                        n_state):
    """Flat parameter buffers: the elementwise updates run once over all parameters
    packed end to end (the optimizers' flat path) and must give what a launch per
    parameter gives, on the reference and on every device."""
    k = device_kernels(device)
    rng = np.random.default_rng(11)
    shapes = [(5, 7), (7,), (3, 5), (3,)]
    sizes = [int(np.prod(s)) for s in shapes]
    total = sum(sizes)
    param = rng.standard_normal(total)
    grad = rng.standard_normal(total)
    state = [np.abs(rng.standard_normal(total)) for _ in range(n_state)]
    if name == "rmsprop":
        state[2][...] = 0
    step = {"step": 3} if name in ("adam", "adagrad") else {}
    update = getattr(k, f"{name}_update")
    flat = [param.copy()] + [s.copy() for s in state]
    update(flat[0], grad, *flat[1:], **step, **hyper)
    pieces = [param.copy()] + [s.copy() for s in state]
    start = 0
    for shape, size in zip(shapes, sizes):
        views = [a[start:start + size].reshape(shape) for a in pieces]
        update(views[0], grad[start:start + size].reshape(shape), *views[1:], **step, **hyper)
        start += size
    for a, b in zip(flat, pieces):
        np.testing.assert_array_equal(a, b)  # elementwise: the packing changes nothing
    ref = getattr(R, f"{name}_update")
    want = ref(np, param.copy(), grad, *[s.copy() for s in state], **step, **hyper)
    np.testing.assert_allclose(flat[0], want[0], rtol=1e-12, atol=1e-14)


def test_read_only_gradient_takes_the_fused_path():
    rng = np.random.default_rng(4)
    param, grad = rng.standard_normal(10), rng.standard_normal(10)
    grad.setflags(write=False)
    m, v = np.zeros(10), np.zeros(10)
    want = R.adam_update(np, param, grad, m, v, step=1, lr=0.1)
    FUSED.adam_update(param, grad, m, v, step=1, lr=0.1)
    np.testing.assert_allclose(param, want[0])


# ------------------------------------------------------------ CPU only: larger shapes, fallbacks, in place

def run_optimizer(name, rng, shape, dtype, hyper, steps=3):
    """Run ``steps`` updates on the fused backend and the reference; return both states."""
    param = state_array(rng, shape, dtype)
    grads = [state_array(rng, shape, dtype) for _ in range(steps)]
    if name == "sgd":
        states = [state_array(rng, shape, dtype)]
    elif name == "adam":
        states = [state_array(rng, shape, dtype), state_array(rng, shape, dtype, True)]
    elif name == "rmsprop":
        states = [state_array(rng, shape, dtype, True), state_array(rng, shape, dtype),
                  np.asarray(0.01 * state_array(rng, shape, dtype))]
    elif name == "adagrad":
        states = [state_array(rng, shape, dtype, True)]
    else:
        states = [state_array(rng, shape, dtype, True), state_array(rng, shape, dtype, True)]
    ref = [param.copy()] + [s.copy() for s in states]
    fused = [param.copy()] + [s.copy() for s in states]
    for t, g in enumerate(grads, start=1):
        h = dict(hyper)
        if name in ("adam", "adagrad"):
            h["step"] = t
        if name == "sgd":
            h["first_step"] = t == 1 and hyper.get("first_step", False)
        getattr(UNFUSED, f"{name}_update")(ref[0], g, *ref[1:], **h)
        getattr(FUSED, f"{name}_update")(fused[0], g, *fused[1:], **h)
    return fused, ref


OPTIMIZER_CASES = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9, first_step=True)),
    ("sgd", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adam", dict(lr=1e-3)),
    ("adam", dict(lr=1e-2, beta1=0.8, beta2=0.99, weight_decay=0.1)),
    ("adam", dict(lr=1e-2, weight_decay=0.1, decoupled=True)),
    ("rmsprop", dict(lr=1e-2)),
    ("rmsprop", dict(lr=1e-2, momentum=0.9, weight_decay=0.01)),
    ("rmsprop", dict(lr=1e-2, momentum=0.5, centered=True, alpha=0.9)),
    ("adagrad", dict(lr=1e-2)),
    ("adagrad", dict(lr=1e-2, lr_decay=0.1, weight_decay=0.01)),
    ("adadelta", dict()),
    ("adadelta", dict(lr=0.5, rho=0.8, weight_decay=0.01)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", OPT_SHAPES)
@pytest.mark.parametrize("name,hyper", OPTIMIZER_CASES)
def test_optimizer_updates_match_reference(name, hyper, shape, dtype):
    rng = np.random.default_rng(10)
    fused, ref = run_optimizer(name, rng, shape, dtype, hyper)
    for got, want in zip(fused, ref):
        assert_close(got, want, dtype, scale=1.0)


@settings(PROFILE)
@given(name_hyper=st.sampled_from(OPTIMIZER_CASES), dtype=st.sampled_from(DTYPES),
       lr=st.floats(1e-5, 1.0), wd=st.sampled_from([0.0, 1e-3, 0.5]),
       size=st.integers(1, 300), seed=st.integers(0, 2**31))
def test_optimizer_updates_hypothesis(name_hyper, dtype, lr, wd, size, seed):
    name, hyper = name_hyper
    hyper = dict(hyper, lr=lr, weight_decay=wd)
    fused, ref = run_optimizer(name, np.random.default_rng(seed), (size,), dtype, hyper)
    for got, want in zip(fused, ref):
        assert_close(got, want, dtype, scale=1.0)


def test_sgd_without_momentum_accepts_no_buffer():
    p = np.ones(5, np.float32)
    FUSED.sgd_update(p, np.full(5, 2.0, np.float32), None, lr=0.5)
    np.testing.assert_array_equal(p, 0.0)


def test_optimizer_non_contiguous_falls_back():
    rng = np.random.default_rng(11)
    base = state_array(rng, (8, 10), np.float64)
    for backend in (FUSED, UNFUSED):
        p = base.copy()
        m = np.zeros_like(p)
        v = np.zeros_like(p)
        backend.adam_update(p[:, ::2], base[:, ::2], m[:, ::2], v[:, ::2], step=1, lr=0.1)
        if backend is FUSED:
            fused_p = p
    np.testing.assert_array_equal(fused_p, p)
    assert not np.array_equal(p[:, 1::2], 0) and np.array_equal(p[:, 1::2], base[:, 1::2])


def test_adam_nan_gradient_propagates():
    p = np.ones(4, np.float32)
    g = np.array([0.1, np.nan, np.inf, -0.1], np.float32)
    m, v = np.zeros(4, np.float32), np.zeros(4, np.float32)
    FUSED.adam_update(p, g, m, v, step=1, lr=0.1)
    assert np.isnan(p[1]) and np.isnan(p[2]) and np.isfinite(p[[0, 3]]).all()


# ------------------------------------------------------------ CUDA simulator: launch geometry, launcher checks


SIM_SHAPES = [(1,), (5, 7)]


def _sim_tol(dtype):
    return {"rtol": 3e-6, "atol": 1e-7} if dtype == "float32" else {"rtol": 1e-13, "atol": 1e-15}


def _sim_state(rng, shape, dtype, positive=False):
    a = rng.standard_normal(shape)
    return (np.abs(a) if positive else a).astype(dtype)


def _sim_compare(got, want, dtype):
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **_sim_tol(dtype))


SIM_SGD_CASES = [
    {"lr": 0.1},
    {"lr": 0.1, "weight_decay": 0.01},
    {"lr": 0.1, "momentum": 0.9},
    {"lr": 0.1, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.05},
    {"lr": 0.05, "momentum": 0.8, "nesterov": True},
]


@CUDASIM
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("shape", SIM_SHAPES)
@pytest.mark.parametrize("hyper", SIM_SGD_CASES, ids=str)
def test_cudasim_sgd(ck, rng, shape, dtype, hyper):
    p, p_ref = _sim_state(rng, shape, dtype), None
    p_ref = p.copy()
    buf = np.zeros(shape, dtype) if hyper.get("momentum") else None
    buf_ref = None if buf is None else buf.copy()
    for step in range(1, 4):
        g = _sim_state(rng, shape, dtype)
        p_new, buf_new = reference.sgd_update(np, p_ref, g, buf_ref, first_step=step == 1,
                                              **hyper)
        p_ref = p_new.astype(dtype)
        buf_ref = None if buf_new is None else buf_new.astype(dtype)
        ck.sgd_update(p, g, buf, first_step=step == 1, **hyper)
        _sim_compare([p] + ([] if buf is None else [buf]),
                 [p_ref] + ([] if buf is None else [buf_ref]), dtype)


SIM_ADAM_CASES = [
    {"lr": 1e-3},
    {"lr": 1e-2, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.1},
    {"lr": 1e-2, "weight_decay": 0.1, "decoupled": True},
]


@CUDASIM
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("shape", SIM_SHAPES)
@pytest.mark.parametrize("hyper", SIM_ADAM_CASES, ids=str)
def test_cudasim_adam(ck, rng, shape, dtype, hyper):
    p = _sim_state(rng, shape, dtype)
    m, v = np.zeros(shape, dtype), np.zeros(shape, dtype)
    ref = [p.copy(), m.copy(), v.copy()]
    for step in range(1, 4):
        g = _sim_state(rng, shape, dtype)
        ref = [a.astype(dtype) for a in reference.adam_update(np, *ref[:1], g, *ref[1:],
                                                             step=step, **hyper)]
        ck.adam_update(p, g, m, v, step=step, **hyper)
        _sim_compare([p, m, v], ref, dtype)


SIM_RMSPROP_CASES = [
    {"lr": 1e-2},
    {"lr": 1e-2, "alpha": 0.9, "weight_decay": 0.1},
    {"lr": 1e-2, "momentum": 0.9},
    {"lr": 1e-2, "centered": True},
    {"lr": 1e-2, "momentum": 0.5, "centered": True, "weight_decay": 0.01},
]


@CUDASIM
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("shape", SIM_SHAPES)
@pytest.mark.parametrize("hyper", SIM_RMSPROP_CASES, ids=str)
def test_cudasim_rmsprop(ck, rng, shape, dtype, hyper):
    p = _sim_state(rng, shape, dtype)
    sq = np.zeros(shape, dtype)
    buf = np.zeros(shape, dtype) if hyper.get("momentum") else None
    ga = np.zeros(shape, dtype) if hyper.get("centered") else None
    ref = [p.copy(), sq.copy(), None if buf is None else buf.copy(),
           None if ga is None else ga.copy()]
    for _ in range(3):
        g = _sim_state(rng, shape, dtype)
        out = reference.rmsprop_update(np, ref[0], g, ref[1], ref[2], ref[3], **hyper)
        ref = [None if a is None else a.astype(dtype) for a in out]
        ck.rmsprop_update(p, g, sq, buf, ga, **hyper)
        got = [p, sq, buf, ga]
        _sim_compare([a for a in got if a is not None], [a for a in ref if a is not None], dtype)


@CUDASIM
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("shape", SIM_SHAPES)
@pytest.mark.parametrize("hyper", [{"lr": 0.1}, {"lr": 0.1, "lr_decay": 0.5, "weight_decay": 0.1,
                                                      "eps": 1e-6}], ids=str)
def test_cudasim_adagrad(ck, rng, shape, dtype, hyper):
    p = _sim_state(rng, shape, dtype)
    s = np.full(shape, 0.1, dtype)
    ref = [p.copy(), s.copy()]
    for step in range(1, 4):
        g = _sim_state(rng, shape, dtype)
        ref = [a.astype(dtype) for a in reference.adagrad_update(np, ref[0], g, ref[1],
                                                                step=step, **hyper)]
        ck.adagrad_update(p, g, s, step=step, **hyper)
        _sim_compare([p, s], ref, dtype)


@CUDASIM
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("shape", SIM_SHAPES)
@pytest.mark.parametrize("hyper", [{}, {"lr": 0.5, "rho": 0.8, "eps": 1e-5,
                                                "weight_decay": 0.1}], ids=str)
def test_cudasim_adadelta(ck, rng, shape, dtype, hyper):
    p = _sim_state(rng, shape, dtype)
    v, u = np.zeros(shape, dtype), np.zeros(shape, dtype)
    ref = [p.copy(), v.copy(), u.copy()]
    for _ in range(3):
        g = _sim_state(rng, shape, dtype)
        ref = [a.astype(dtype) for a in reference.adadelta_update(np, ref[0], g, ref[1],
                                                                 ref[2], **hyper)]
        ck.adadelta_update(p, g, v, u, **hyper)
        _sim_compare([p, v, u], ref, dtype)


@CUDASIM
def test_cudasim_grid_stride_covers_every_element(tiny_grid, rng):
    ck = tiny_grid
    p = rng.standard_normal((5, 7))
    g = rng.standard_normal((5, 7))
    m, v = np.zeros_like(p), np.zeros_like(p)
    ref = reference.adam_update(np, p, g, m, v, step=1, lr=0.1)
    ck.adam_update(p, g, m, v, step=1, lr=0.1)
    np.testing.assert_allclose(p, ref[0], 1e-13)


@CUDASIM
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_cudasim_gradient_nan_propagates(ck):
    p = np.ones(3, np.float32)
    g = np.array([np.nan, np.inf, 1.0], np.float32)
    m, v = np.zeros(3, np.float32), np.zeros(3, np.float32)
    ck.adam_update(p, g, m, v, step=1, lr=0.1)
    assert np.isnan(p[:2]).all() and np.isfinite(p[2])


@CUDASIM
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


# ------------------------------------------------------------ loss scaling inside the update

def _optim_module(device):
    if device == "cpu":
        from dualnn.kernels.optim import cpu

        return cpu
    from dualnn.kernels.optim import cuda

    return cuda


def _scaled_case(name, dtype, seed=3):
    rng = np.random.default_rng(seed)
    shape = (5, 7)
    param = rng.standard_normal(shape).astype(dtype)
    grad = rng.standard_normal(shape).astype(dtype)
    n_state = {c[0]: c[2] for c in CASE_UPDATES}[name]
    state = [np.abs(rng.standard_normal(shape)).astype(dtype) for _ in range(n_state)]
    if name == "rmsprop":
        state[2][...] = 0
    return param, grad, state


def _call(fn, name, param, grad, state, **kwargs):
    if name == "rmsprop":
        return fn(param, grad, state[0], state[1], state[2], **kwargs)
    return fn(param, grad, *state, **kwargs)


SCALED_UPDATES = [
    ("sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.25, "weight_decay": 0.01}),
    ("adam", {"lr": 0.01, "weight_decay": 0.1}),
    ("adam", {"lr": 0.01, "weight_decay": 0.1, "decoupled": True}),
    ("rmsprop", {"lr": 0.01, "momentum": 0.5, "centered": True, "weight_decay": 0.1}),
    ("adagrad", {"lr": 0.1, "lr_decay": 0.1, "weight_decay": 0.1}),
    ("adadelta", {"lr": 1.0, "weight_decay": 0.01}),
]
_STEP_NAMES = ("sgd", "adam", "adagrad")


@pytest.mark.parametrize("device", ["reference", *DEVICES])
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("name,hyper", SCALED_UPDATES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(SCALED_UPDATES)])
def test_scaled_update_equals_the_unscaled_update_of_the_true_step(device, dtype, name, hyper):
    """``grad * 2**k`` with ``inv_scale = 2**-k``, host step 5 with 2 skipped before: the
    same result as the plain update of the unscaled gradient at step 3 (powers of two:
    the unscale is exact), i.e. weight decay and bias corrections see true values."""
    param, grad, state = _scaled_case(name, dtype)
    ref = getattr(R, f"{name}_update")
    plain = {"step": 3} if name in ("adam", "adagrad") else {}
    want = _call(lambda *a, **k: ref(np, *a, **k), name, param, grad, state, **plain, **hyper)
    inv = np.array([2.0 ** -10], dtype=dtype)
    found = np.zeros(1, np.int32)
    skipped = np.array([2], np.int32)
    scaling = {"inv_scale": inv, "found_inf": found, "skipped": skipped}
    step = {"step": 5} if name in _STEP_NAMES else {}
    scaled_grad = grad * dtype_scale(dtype, 2.0 ** 10)
    if device == "reference":
        got = _call(lambda *a, **k: ref(np, *a, **k), name, param, scaled_grad, state,
                    **step, **scaling, **hyper)
    else:
        got = [param.copy()] + [s.copy() for s in state]
        _call(getattr(_optim_module(device), f"{name}_update"), name, got[0], scaled_grad,
              got[1:], **step, **scaling, **hyper)
    rtol, atol = tolerances(dtype)
    for g, w in zip(got, want):
        if g is not None:
            np.testing.assert_allclose(g, w, rtol=rtol * 10, atol=atol * 10)
    if name == "sgd":  # step - skipped == 3: not the first step, the buffer was blended
        first = ref(np, param, grad, state[0], first_step=True, **hyper)
        assert not np.allclose(got[1], first[1])


def dtype_scale(dtype, value):
    return np.dtype(dtype).type(value)


# The reference computes the update from the non-finite gradient, then keeps the old values.
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("device", ["reference", *DEVICES])
@pytest.mark.parametrize("name,hyper", SCALED_UPDATES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(SCALED_UPDATES)])
def test_a_set_flag_leaves_parameter_and_state_bit_identical(device, name, hyper):
    param, grad, state = _scaled_case(name, "float32")
    grad.reshape(-1)[3] = np.inf
    before = [param.copy()] + [s.copy() for s in state]
    scaling = {"inv_scale": np.array([0.5], np.float32), "found_inf": np.ones(1, np.int32),
               "skipped": np.zeros(1, np.int32)}
    step = {"step": 1} if name in _STEP_NAMES else {}
    if device == "reference":
        got = _call(lambda *a, **k: getattr(R, f"{name}_update")(np, *a, **k), name, param,
                    grad, state, **step, **scaling, **hyper)
    else:
        got = [param.copy()] + [s.copy() for s in state]
        _call(getattr(_optim_module(device), f"{name}_update"), name, got[0], grad, got[1:],
              **step, **scaling, **hyper)
    for g, b in zip(got, before):
        if g is not None:
            np.testing.assert_array_equal(g, b)


@CUDASIM
@pytest.mark.parametrize("write", [False, True])
def test_cudasim_grad_check_finite_sets_the_flag_and_unscales(write):
    from dualnn.kernels.optim import cuda

    rng = np.random.default_rng(0)
    grad = rng.standard_normal(300).astype(np.float32)
    original = grad.copy()
    found = np.zeros(1, np.int32)
    inv = np.array([0.25], np.float32) if write else None
    cuda.grad_check_finite(grad, found, inv_scale=inv)
    assert found[0] == 0
    np.testing.assert_array_equal(grad, original * 0.25 if write else original)
    grad[123] = np.nan
    cuda.grad_check_finite(grad, found)
    assert found[0] == 1


@CUDASIM
def test_cudasim_loss_scale_update_is_gradscalers_state_machine():
    from dualnn.kernels.optim import cuda

    scale = np.array([1024.0], np.float32)
    inv = np.zeros(1, np.float32)
    tracker = np.zeros(1, np.int32)
    found = np.zeros(1, np.int32)
    seen = []
    for overflow in (0, 0, 1, 0, 0, 0, 1):
        found[0] = overflow
        cuda.loss_scale_update(scale, inv, tracker, found, growth_factor=2.0,
                               backoff_factor=0.5, growth_interval=3)
        seen.append((float(scale[0]), int(tracker[0])))
        assert inv[0] == np.float32(1.0) / scale[0] and found[0] == 0
    assert seen == [(1024.0, 1), (1024.0, 2), (512.0, 0), (512.0, 1), (512.0, 2),
                    (1024.0, 0), (512.0, 0)]


@pytest.mark.parametrize("device", ["reference", *DEVICES])
@pytest.mark.parametrize("segmented", [False, True])
@pytest.mark.parametrize("flag", [0, 1])
def test_lars_skips_on_the_flag_and_only_then(device, segmented, flag):
    from dualnn.kernels.trust_ratio import reference as TR

    rng = np.random.default_rng(9)
    param = rng.standard_normal(40).astype(np.float32)
    grad = rng.standard_normal(40).astype(np.float32)
    buf = rng.standard_normal(40).astype(np.float32)
    hyper = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3, "trust_coefficient": 0.01}
    layout = {"offsets": (0, 30, 40), "adapt": (True, False)} if segmented else {}
    name = "lars_update_segmented" if segmented else "lars_update"
    want = getattr(TR, name)(np, param, grad, buf, **layout, **hyper)
    if flag:
        want = (param, buf)
    found = np.array([flag], np.int32)
    got = [param.copy(), buf.copy()]
    if device == "reference":
        got = getattr(TR, name)(np, param, grad, buf, **layout, **hyper, found_inf=found)
    elif device == "cpu":
        from dualnn.kernels.trust_ratio import cpu as TC

        getattr(TC, name)(got[0], grad, got[1], **layout, **hyper, found_inf=found)
    else:
        from dualnn.kernels.trust_ratio import cuda as TG

        if segmented:
            chunks, segments = TG.segment_layout(**layout)
            shapes = TG.segmented_scratch_shapes(chunks, segments)
            partial, ratio = (np.zeros(s, np.float32) for s in shapes[:2])
            TG.lars_update_segmented(got[0], grad, got[1], chunks=chunks, segments=segments,
                                     partial=partial, ratio=ratio,
                                     found=np.zeros(shapes[2], np.int32), **hyper,
                                     found_inf=found)
        else:
            partial, ratio = (np.zeros(s, np.float32) for s in TG.scratch_shapes(40))
            TG.lars_update(got[0], grad, got[1], partial=partial, ratio=ratio, **hyper,
                           found_inf=found)
    for g, w in zip(got, want):
        if flag:
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    if not flag:
        assert not np.array_equal(got[0], param)
