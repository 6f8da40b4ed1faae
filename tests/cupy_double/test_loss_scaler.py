"""LossScaler on the GPU path: the flag, the scale and the skip count stay on the device.

A scaled step is the finite check (one launch over the flat gradient), the optimizer's
fused update (unscale inside, skip on the flag) and the scale update (one tiny kernel):
no host read, nothing allocated after the first step, and the results of the CPU's host
path (float64) with overflows injected.
"""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
from dualnn.callbacks import optimizer_steps
from dualnn.precision import LossScaler
from tests.cupy_double import budgets
from tests.cupy_double.helpers import KernelLaunches, data, mlp, tolerance

OVERFLOWS = {1, 3, 4}
STEPS = 7
OPTIMIZERS = {
    "adam": lambda p: dn.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    "sgd": lambda p: dn.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-3),
    "rmsprop": lambda p: dn.optim.RMSprop(p, lr=1e-2, momentum=0.5),
    "adagrad": lambda p: dn.optim.Adagrad(p, lr=0.1, lr_decay=0.01),
    "adadelta": lambda p: dn.optim.Adadelta(p, lr=1.0),
    "lars": lambda p: dn.optim.LARS(p, lr=0.1, weight_decay=1e-3, trust_coefficient=0.01),
    "lamb": lambda p: dn.optim.LAMB(p, lr=1e-2, weight_decay=1e-2),
}


def _run(backend, name, read_flag, steps=STEPS, on_step=None):
    x, y = data("softmax_cross_entropy")
    with dn.use_backend(backend):
        dn.seed(3)
        model = mlp("float64")
        opt = OPTIMIZERS[name](model.parameters())
        loss = dn.losses.SoftmaxCrossEntropy()
        scaler = LossScaler(init_scale=2.0 ** 6, growth_interval=2, read_flag=read_flag)
        xd, yd = backend.asarray(x, "float64"), backend.asarray(y)
        for i in range(steps):
            loss.forward(model.forward(xd, training=True), yd)
            dy = scaler.scale(loss.backward())
            if i in OVERFLOWS:
                dy = dy * np.inf
            model.backward(dy)
            if on_step is not None:
                on_step(i)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
        params = [backend.to_host(p.data).copy() for p in model.parameters()]
        state = opt.state_dict()["state"]
        return params, state, scaler.state_dict(), optimizer_steps(opt)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_device_flag_steps_match_the_cpu_host_path(name):
    gpu = _run(dn.device.backend_for("gpu"), name, read_flag=None)
    cpu = _run(dn.backend.NumpyBackend(), name, read_flag=None)
    tol = tolerance("float64")
    for a, b in zip(gpu[0], cpu[0]):
        np.testing.assert_allclose(a, b, **tol)
    for index, entry in cpu[1].items():
        assert gpu[1][index]["step"] == entry["step"] == STEPS - len(OVERFLOWS)
        for key, value in entry.items():
            np.testing.assert_allclose(gpu[1][index][key], value, **tol)
    assert gpu[2] == cpu[2]
    assert gpu[3] == cpu[3] == STEPS - len(OVERFLOWS)


def _last_step_launches(monkeypatch, name):
    """Kernel names launched by the last scaled step of ``name`` (no flag read)."""
    launches = KernelLaunches()

    def watch(i):
        if i == STEPS - 1:
            launches.install(monkeypatch)

    _run(dn.device.backend_for("gpu"), name, read_flag=None, on_step=watch)
    return launches.names


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_scaled_step_is_three_launches_over_flat_buffers(monkeypatch):
    assert _last_step_launches(monkeypatch, "adam") == [
        "grad_check_finite", "adam_update", "loss_scale_update"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_lars_unscales_in_place_then_skips_on_the_flag_in_its_segmented_step(monkeypatch):
    assert _last_step_launches(monkeypatch, "lars") == [
        "grad_check_finite", "segmented_lars_partials", "segmented_finalize",
        "segmented_lars_apply", "loss_scale_update"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_lamb_unscales_and_skips_in_its_segmented_step(monkeypatch):
    """LAMB's scaled step: the finite check, its three segmented launches (which unscale
    and skip on the flag themselves), the scale update; no host read."""
    assert _last_step_launches(monkeypatch, "lamb") == [
        "grad_check_finite", "segmented_lamb_partials", "segmented_finalize",
        "segmented_lamb_apply", "loss_scale_update"]


@pytest.mark.parametrize("name", ["explicit_loss_scaler", "explicit_loss_scaler_clip",
                                  "fit_mixed_float16", "fit_mixed_float16_sgd",
                                  "explicit_loss_scaler_lamb"])
def test_loss_scaled_steps_read_nothing_back(name):
    result = budgets.SCENARIOS[name]()
    print(result.line())
    assert result.sync == 0, repr(result)


@pytest.mark.parametrize("name", ["explicit_loss_scaler", "explicit_loss_scaler_clip",
                                  "fit_mixed_float16", "fit_mixed_float16_sgd",
                                  "explicit_loss_scaler_lamb"])
def test_the_scaler_and_the_optimizer_allocate_nothing_per_step(name):
    """Every allocation of the step comes from the model's forward/backward (16-bit
    rounding, GEMM outputs: other budgets), none from scaling, unscaling or updating."""
    result = budgets.SCENARIOS[name]()
    sites = result.alloc_sites
    for owner in ("dualnn/precision.py", "dualnn/optim/", "kernels/optim/", "accumulate.py",
                  "loss_scale", "grad_check_finite"):
        assert owner not in sites, repr(result)


def test_explicit_loss_scaler_allocates_what_the_plain_step_does():
    scaled = budgets.SCENARIOS["explicit_loss_scaler"]()
    assert scaled.alloc <= budgets.SCENARIOS["explicit"]().alloc, repr(scaled)


def test_lamb_mixed_float16_fit_step_reads_and_allocates_nothing():
    """LAMB's scaled fit step: the flag, ``1 / scale`` and the skip count stay on the
    device (0 host syncs) and nothing is allocated per step."""
    result = budgets.SCENARIOS["fit_mixed_float16_lamb"]()
    print(result.line())
    assert (result.sync, result.alloc) == (0, 0), repr(result)


def test_fit_mixed_float16_allocates_nothing_per_step():
    result = budgets.SCENARIOS["fit_mixed_float16"]()
    assert result.alloc == 0, repr(result)
