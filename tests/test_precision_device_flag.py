"""LossScaler's device-flag path (no host read per step), checked on the CPU backends.

``LossScaler(read_flag=False)`` runs what a GPU runs: the finite check writes a device
flag, the optimizer's update kernels unscale the gradient and skip on the flag, the skip
is counted on the device and folded into the host's step counts later. Here it must match
the host path (``read_flag=True``, PyTorch's way) bit for bit, and a plain optimizer fed
the unscaled gradients of the clean steps only.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import dualnn as dn
from dualnn import layers as L
from dualnn.callbacks import optimizer_steps
from dualnn.parameter import Parameter
from dualnn.precision import LossScaler, PerformanceWarning

SHAPES = [(4, 3), (3,)]
OVERFLOWS = {1, 4, 5}           # attempts (from 0) whose gradient holds an inf
STEPS = 9

OPTIMIZERS = {
    "sgd": lambda p: dn.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.25, weight_decay=0.01),
    "adam": lambda p: dn.optim.Adam(p, lr=0.01, weight_decay=0.1),
    "adamw": lambda p: dn.optim.AdamW(p, lr=0.01),
    "rmsprop": lambda p: dn.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
    "adagrad": lambda p: dn.optim.Adagrad(p, lr=0.1, lr_decay=0.1, weight_decay=0.1),
    "adadelta": lambda p: dn.optim.Adadelta(p, lr=1.0, weight_decay=0.01),
    "lars": lambda p: dn.optim.LARS(p, lr=0.1, weight_decay=1e-3, trust_coefficient=0.01),
    "lamb": lambda p: dn.optim.LAMB(p, lr=0.01, weight_decay=0.1),
}


def _params(backend, dtype="float64"):
    rng = np.random.default_rng(0)
    return [Parameter(backend.store(rng.standard_normal(s).astype(dtype)), backend,
                      name=f"{i}.w") for i, s in enumerate(SHAPES)]


def _grads(step, dtype="float64"):
    rng = np.random.default_rng(100 + step)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _host(backend, params):
    return [backend.to_host(p.data).copy() for p in params]


def _state(backend, params):
    return [{k: (backend.to_host(v).copy() if hasattr(v, "shape") else v)
             for k, v in p.state.items()} for p in params]


def _run_scaled(backend, kind, read_flag, init_scale=2.0 ** 8, growth_interval=2,
                options=None):
    """STEPS attempts with the scaler; returns params per attempt, scales, the optimizer."""
    params = _params(backend)
    opt = OPTIMIZERS[kind](params)
    for name, value in (options or {}).items():
        setattr(opt, name, value)
    scaler = LossScaler(init_scale=init_scale, growth_interval=growth_interval,
                        read_flag=read_flag)
    trajectory, scales, returned = [], [], []
    for step in range(STEPS):
        scale = scaler.get_scale()
        for p, g in zip(params, _grads(step)):
            g = g * scale
            if step in OVERFLOWS and p.name == "1.w":
                g[1] = np.inf if step != 4 else np.nan
            p.grad = backend.store(g)
        before, state_before = _host(backend, params), _state(backend, params)
        returned.append(scaler.step(opt))
        scaler.update()
        after = _host(backend, params)
        if step in OVERFLOWS:  # bit-identical parameters and optimizer state
            for a, b in zip(after, before):
                np.testing.assert_array_equal(a, b)
            for now, then in zip(_state(backend, params), state_before):
                for key, value in then.items():
                    if key != "step":
                        np.testing.assert_array_equal(now[key], value)
        trajectory.append(after)
        scales.append(scaler.get_scale())
    return trajectory, scales, returned, opt, scaler


def _run_plain(backend, kind, options=None):
    """The same optimizer fed only the clean steps' unscaled gradients."""
    params = _params(backend)
    opt = OPTIMIZERS[kind](params)
    for name, value in (options or {}).items():
        setattr(opt, name, value)
    trajectory = []
    for step in range(STEPS):
        if step not in OVERFLOWS:
            for p, g in zip(params, _grads(step)):
                p.grad = backend.store(g)
            opt.step()
        trajectory.append(_host(backend, params))
    return trajectory, opt


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerformanceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # inf/nan met by the reference math
        yield


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_device_flag_path_equals_host_path_and_the_clean_steps_only(backend, kind):
    device, scales, returned, opt, _ = _run_scaled(backend, kind, read_flag=False)
    host, host_scales, host_returned, host_opt, _ = _run_scaled(backend, kind, read_flag=True)
    plain, plain_opt = _run_plain(backend, kind)
    for d, h, p in zip(device, host, plain):
        for a, b, c in zip(d, h, p):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-14)
    # GradScaler's machine, growth_interval 2: 256 ok(1) inf:128 ok ok:256 nan:128
    # inf:64 ok ok:128 ok(1)
    assert scales == host_scales == [256, 128, 128, 256, 128, 64, 64, 128, 128]
    assert returned == [None] * STEPS
    assert host_returned == [s not in OVERFLOWS for s in range(STEPS)]
    # the skips are counted on the device until folded; then the counts are exact
    assert int(backend.item(opt.skip_counter())) == len(OVERFLOWS)
    assert optimizer_steps(opt) == STEPS
    assert opt.sync_skipped() == len(OVERFLOWS)
    assert optimizer_steps(opt) == optimizer_steps(host_opt) == optimizer_steps(plain_opt) \
        == STEPS - len(OVERFLOWS)
    assert opt.sync_skipped() == 0


def test_adam_bias_correction_does_not_advance_on_a_skip(backend):
    """One skipped first step, then a clean one: Adam's first real step has t = 1, so
    the update is lr * sign(g) for every element (|m / sqrt(v)| = 1 at t = 1)."""
    params = [Parameter(backend.store(np.zeros(4)), backend, name="w")]
    opt = dn.optim.Adam(params, lr=0.5, eps=0.0)
    scaler = LossScaler(init_scale=4.0, read_flag=False)
    params[0].grad = backend.store(np.array([np.inf, 1.0, 1.0, 1.0]))
    scaler.step(opt)
    scaler.update()
    params[0].grad = backend.store(np.array([2.0, -3.0, 0.5, 8.0]))  # scale is now 2
    scaler.step(opt)
    scaler.update()
    np.testing.assert_allclose(backend.to_host(params[0].data), [-0.5, 0.5, -0.5, -0.5])


def test_clipping_sees_unscaled_gradients_on_the_device_path(backend):
    options = {"clip_grad_norm": 0.5}
    device, *_ = _run_scaled(backend, "adam", read_flag=False, options=options)
    plain, _ = _run_plain(backend, "adam", options=options)
    for d, p in zip(device, plain):
        for a, c in zip(d, p):
            np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-14)


def test_explicit_unscale_writes_back_and_the_update_does_not_unscale_again(backend):
    params = _params(backend)
    opt = dn.optim.SGD(params, lr=0.1)
    scaler = LossScaler(init_scale=8.0, read_flag=False)
    grads = _grads(0)
    for p, g in zip(params, grads):
        p.grad = backend.store(g * 8.0)
    before = _host(backend, params)
    scaler.unscale_(params)
    for p, g in zip(params, grads):
        np.testing.assert_array_equal(backend.to_host(p.grad), g)
    scaler.step(opt)
    scaler.update()
    for a, b, g in zip(_host(backend, params), before, grads):
        np.testing.assert_allclose(a, b - 0.1 * g, rtol=1e-12)


def test_optimizer_state_dict_folds_the_skips_and_loading_resets_the_counter():
    backend = dn.backend.NumpyBackend()
    _, _, _, opt, _ = _run_scaled(backend, "adam", read_flag=False)
    saved = opt.state_dict()
    assert {entry["step"] for entry in saved["state"].values()} == {STEPS - len(OVERFLOWS)}
    assert int(backend.item(opt.skip_counter())) == 0
    opt.skip_counter()[...] = 3
    opt.load_state_dict(saved)
    assert int(backend.item(opt.skip_counter())) == 0


def test_scaler_state_lives_on_the_backend_and_round_trips():
    backend = dn.backend.NumpyBackend()
    _, _, _, _, scaler = _run_scaled(backend, "sgd", read_flag=False)
    assert backend.owns(scaler._arrays["scale"]) and scaler._arrays["scale"].shape == (1,)
    state = scaler.state_dict()
    assert state["scale"] == 128.0 and state["growth_tracker"] == 1
    fresh = LossScaler()
    fresh.load_state_dict(state)
    params = _params(backend)
    fresh.scale(backend.store(np.ones(2)))  # binds the device state
    assert fresh.state_dict() == state
    fresh.update(new_scale=4.0)
    assert fresh.get_scale() == 4.0 and fresh.state_dict()["growth_tracker"] == 1
    assert params  # the parameters were only needed to bind a backend


def test_lamb_steps_on_the_device_flag_and_its_bias_correction_does_not_advance(backend):
    """LAMB takes the device path (``step`` returns None: no read); a skipped first step
    leaves everything unchanged and the first real step has t = 1, so a 1-D parameter
    (Adam's step, no trust ratio) moves by lr * sign(g) (|m_hat / sqrt(v_hat)| = 1)."""
    params = [Parameter(backend.store(np.zeros(4)), backend, name="b"),
              Parameter(backend.store(np.ones((2, 2))), backend, name="w")]
    opt = dn.optim.LAMB(params, lr=0.5, eps=0.0, weight_decay=0.1)
    scaler = LossScaler(init_scale=4.0, read_flag=False)
    params[0].grad = backend.store(np.array([np.inf, 1.0, 1.0, 1.0]))
    params[1].grad = backend.store(np.ones((2, 2)))
    assert scaler.step(opt) is None
    scaler.update()
    np.testing.assert_array_equal(backend.to_host(params[0].data), np.zeros(4))
    np.testing.assert_array_equal(backend.to_host(params[1].data), np.ones((2, 2)))
    assert int(backend.item(opt.skip_counter())) == 1
    params[0].grad = backend.store(np.array([2.0, -3.0, 0.5, 8.0]))  # scale is now 2
    params[1].grad = backend.store(np.array([[2.0, -2.0], [4.0, 6.0]]))
    assert scaler.step(opt) is None
    scaler.update()
    np.testing.assert_allclose(backend.to_host(params[0].data), [-0.5, 0.5, -0.5, -0.5])
    # 2-D: r = sign(g) + 0.1 w = (1.1, -0.9, 1.1, 1.1); phi = ||w|| / ||r||
    r = np.array([[1.1, -0.9], [1.1, 1.1]])
    phi = 2.0 / np.linalg.norm(r)
    np.testing.assert_allclose(backend.to_host(params[1].data), 1.0 - 0.5 * phi * r,
                               rtol=1e-12)


def _mlp():
    dn.seed(5)
    return dn.Sequential(L.Linear(8, 16), L.ReLU(), L.Linear(16, 3))


class _OverflowAt(dn.losses.SoftmaxCrossEntropy):
    """Softmax cross-entropy whose gradient is inf on the chosen calls of backward."""

    def __init__(self, calls):
        super().__init__()
        self.calls, self.count = set(calls), 0

    def backward(self):
        dy = super().backward()
        self.count += 1
        if self.count in self.calls:
            dy = dy * np.inf
        return dy


@pytest.mark.parametrize("log_interval", [1, 3])
def test_fit_mixed_float16_device_flag_equals_host_flag(log_interval):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((96, 8)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    results = []
    for read_flag in (True, False):
        model = _mlp()
        opt = dn.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
        scaler = LossScaler(init_scale=2.0 ** 10, growth_interval=2, read_flag=read_flag)
        hist = dn.fit(model, _OverflowAt({2, 5}), opt, X, y, epochs=2, batch_size=16,
                      shuffle=False, progress=False, precision="mixed_float16",
                      loss_scaler=scaler, log_interval=log_interval)
        results.append(([backend_copy(p.data) for p in model.parameters()], hist,
                        optimizer_steps(opt), scaler.state_dict()))
    (host_p, host_h, host_steps, host_s), (dev_p, dev_h, dev_steps, dev_s) = results
    for a, b in zip(host_p, dev_p):
        np.testing.assert_array_equal(a, b)
    assert host_h["skipped_steps"] == dev_h["skipped_steps"] == [2.0, 0.0]
    assert host_steps == dev_steps == 12 - 2
    assert host_s == dev_s


def backend_copy(a):
    return np.array(a, copy=True)
