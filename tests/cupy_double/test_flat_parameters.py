"""Flat parameter buffers on the GPU path: one optimizer launch for all parameters.

Values, gradients and optimizer state of a model's parameters live in one flat buffer per
kind; ``p.data``/``p.grad``/``p.state[key]`` are views, and every per-parameter contract
(state_dict, load_state_dict, model.to, results equal to the CPU's) keeps holding.
"""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
from tests.cupy_double.helpers import data, mlp, tolerance


def _gpu():
    return dn.device.backend_for("gpu")


def _train(backend, make_optimizer, steps=3, model=None, opt=None):
    x, y = data("softmax_cross_entropy")
    with dn.use_backend(backend):
        if model is None:
            dn.seed(5)
            model = mlp()
            opt = make_optimizer(model.parameters())
        loss = dn.losses.SoftmaxCrossEntropy()
        xd, yd = backend.asarray(x), backend.asarray(y)
        for _ in range(steps):
            loss.forward(model.forward(xd, training=True), yd)
            model.backward(loss.backward())
            opt.step()
            opt.zero_grad()
    return model, opt


def _host_state(model):
    params = model.parameters()
    return [model.backend.to_host(p.data) for p in params]


def _shares(a, flat):
    """``a`` is a view whose memory lies inside ``flat``."""
    start = a.__cuda_array_interface__["data"][0]
    base = flat.__cuda_array_interface__["data"][0]
    return a.flags.owndata is False and base <= start < base + flat.nbytes


OPTIMIZERS = {
    "adam": lambda p: dn.optim.Adam(p, lr=1e-2),
    "sgd_momentum": lambda p: dn.optim.SGD(p, lr=0.1, momentum=0.9),
    "rmsprop": lambda p: dn.optim.RMSprop(p, lr=1e-2, centered=True, momentum=0.5),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_parameters_grads_and_state_are_views_of_flat_buffers(name):
    model, opt = _train(_gpu(), OPTIMIZERS[name])
    flat = opt._flat
    assert flat is not None and flat.size == sum(p.size for p in model.parameters())
    for p in model.parameters():
        assert _shares(p.data, flat.data) and _shares(p.grad, flat.grad)
        for key in opt.state_keys:
            if key in p.state:
                assert _shares(p.state[key], flat.state[key])
        assert p.state["step"] == 3


def test_one_update_launch_per_step(monkeypatch):
    gpu = _gpu()
    calls = []
    original = type(gpu).adam_update

    def counting(self, param, *args, **kwargs):
        calls.append(tuple(param.shape))
        return original(self, param, *args, **kwargs)

    monkeypatch.setattr(type(gpu), "adam_update", counting)
    model, _ = _train(gpu, OPTIMIZERS["adam"], steps=2)
    total = sum(p.size for p in model.parameters())
    assert calls == [(total,), (total,)]


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_flat_training_matches_cpu(name, cpu_backend):
    gpu_model, gpu_opt = _train(_gpu(), OPTIMIZERS[name])
    cpu_model, cpu_opt = _train(cpu_backend, OPTIMIZERS[name])
    for a, b in zip(_host_state(gpu_model), _host_state(cpu_model)):
        np.testing.assert_allclose(a, b, **tolerance("float64"))
    gpu_state, cpu_state = gpu_opt.state_dict()["state"], cpu_opt.state_dict()["state"]
    for i in cpu_state:
        for key, value in cpu_state[i].items():
            np.testing.assert_allclose(gpu_state[i][key], value, **tolerance("float64"))


def test_load_state_dict_and_model_to_repack(cpu_backend):
    gpu = _gpu()
    model, opt = _train(gpu, OPTIMIZERS["adam"], steps=2)
    saved = opt.state_dict()
    _train(gpu, OPTIMIZERS["adam"], steps=1, model=model, opt=opt)
    opt.load_state_dict(saved)  # rebinds p.state: the next step packs it again
    assert all(p.state["step"] == 2 for p in model.parameters())
    first = opt._flat
    model.to(cpu_backend)  # leaves the flat buffers
    model.to(gpu)
    _train(gpu, OPTIMIZERS["adam"], steps=1, model=model, opt=opt)
    assert opt._flat is not first
    for p in model.parameters():
        assert _shares(p.data, opt._flat.data) and p.state["step"] == 3
        np.testing.assert_array_equal(gpu.to_host(p.state["exp_avg"]),
                                      gpu.to_host(opt._flat.state["exp_avg"])[
                                          opt._flat.slices[model.parameters().index(p)][0]:
                                          opt._flat.slices[model.parameters().index(p)][1]
                                      ].reshape(p.shape))


@pytest.mark.parametrize("options", [{"l1": 1e-3}, {"clip_grad_norm": 0.05},
                                     {"l1": 1e-3, "clip_grad_norm": 0.05, "max_norm": 0.5}])
def test_options_keep_one_launch_and_match_cpu(options, cpu_backend, monkeypatch):
    gpu = _gpu()
    calls = []
    original = type(gpu).adam_update

    def counting(self, param, *args, **kwargs):
        calls.append(tuple(param.shape))
        return original(self, param, *args, **kwargs)

    monkeypatch.setattr(type(gpu), "adam_update", counting)
    def make(p):
        return dn.optim.Adam(p, lr=1e-2, **options)
    gpu_model, _ = _train(gpu, make)
    cpu_model, _ = _train(cpu_backend, make)
    total = sum(p.size for p in gpu_model.parameters())
    assert calls == [(total,)] * 3
    for a, b in zip(_host_state(gpu_model), _host_state(cpu_model)):
        np.testing.assert_allclose(a, b, **tolerance("float64"))


class _ReplacingHook(dn.optim.hooks.OptimizerHook):
    """Returns new gradient arrays (a plain list): the update goes per parameter."""

    def before_update(self, optimizer, grads):
        return [g * 0.5 for g in grads]


def test_a_hook_returning_a_plain_list_updates_per_parameter(cpu_backend):
    def make(params):
        opt = dn.optim.Adam(params, lr=1e-2)
        opt.add_hook(_ReplacingHook())
        return opt

    gpu_model, _ = _train(_gpu(), make)
    cpu_model, _ = _train(cpu_backend, make)
    for a, b in zip(_host_state(gpu_model), _host_state(cpu_model)):
        np.testing.assert_allclose(a, b, **tolerance("float64"))
