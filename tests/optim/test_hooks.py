"""Optimizer hooks (L1, max-norm, clipping, user hooks) and declared hyperparameters."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from dualnn import optim
from dualnn.backend import NumpyBackend
from dualnn.errors import ConfigurationError
from dualnn.optim.hooks import GradientClipping, L1Penalty, MaxNorm, OptimizerHook
from dualnn.optim.hyperparameters import Hyperparameters, real
from dualnn.parameter import Parameter

SHAPES = {"0.weight": (4, 3), "0.bias": (4,)}
NAMES = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta"]


def _params(backend, seed=0):
    rng = np.random.default_rng(seed)
    return [Parameter(backend.asarray(rng.normal(scale=2.0, size=shape)), backend, name)
            for name, shape in SHAPES.items()]


def _grads(seed, steps=4):
    rng = np.random.default_rng(100 + seed)
    return [[rng.normal(scale=3.0, size=shape) for shape in SHAPES.values()]
            for _ in range(steps)]


def _train(opt, grad_seq):
    for grads in grad_seq:
        for p, g in zip(opt.params, grads):
            p.backend.assign(p.grad, p.backend.asarray(g))
        opt.step()
    return [np.array(p.backend.to_host(p.data)) for p in opt.params]


@pytest.fixture(params=[True, False], ids=["fused", "unfused"])
def backend(request):
    return NumpyBackend(fused=request.param)


@pytest.mark.parametrize("name", NAMES)
def test_added_hooks_equal_the_keyword_options(backend, name):
    cls = optim.get(name)
    by_keyword = cls(_params(backend), l1=0.01, max_norm=1.5, clip_grad_norm=2.0)
    by_hook = cls(_params(backend))
    for hook in (GradientClipping(2.0), L1Penalty(0.01), MaxNorm(1.5)):
        by_hook.add_hook(hook)
    want = _train(by_keyword, _grads(1))
    got = _train(by_hook, _grads(1))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    plain = _train(cls(_params(backend)), _grads(1))
    assert any(not np.allclose(a, b) for a, b in zip(plain, want))  # the hooks did act


def test_keywords_install_hooks_in_running_order(backend):
    opt = optim.Adam(_params(backend), max_norm=3.0, l1=0.1, clip_grad_norm=1.0)
    assert [type(h) for h in opt.hooks] == [GradientClipping, L1Penalty, MaxNorm]
    assert [h.value for h in opt.hooks] == [1.0, 0.1, 3.0]
    assert optim.SGD(_params(backend)).hooks == ()
    opt.l1 = 0.0  # an option set to its default removes its hook
    assert [type(h) for h in opt.hooks] == [GradientClipping, MaxNorm]
    opt.max_norm = 2.0
    assert opt.max_norm == 2.0 and opt.hooks[-1].value == 2.0
    assert opt.get_config()["l1"] == 0.0 and opt.get_config()["max_norm"] == 2.0
    with pytest.raises(ConfigurationError, match="Adam: max_norm"):
        opt.max_norm = -1.0


def test_user_hook_runs_before_and_after_update_and_keeps_grad(backend):
    calls = []

    class Halve(OptimizerHook):
        def before_update(self, optimizer, grads):
            calls.append(("before", [g.copy() for g in grads]))
            return [g * 0.5 for g in grads]

        def after_update(self, optimizer):
            calls.append(("after", [np.array(p.data) for p in optimizer.params]))

    params = _params(backend)
    start = [np.array(p.data) for p in params]
    opt = optim.SGD(params, lr=0.1)
    hook = opt.add_hook(Halve())
    assert opt.hooks == (hook,)
    grads = _grads(2, steps=1)[0]
    for p, g in zip(params, grads):
        p.grad[...] = g
    opt.step()
    assert [c[0] for c in calls] == ["before", "after"]
    for p, g, s, seen, after in zip(params, grads, start, calls[0][1], calls[1][1]):
        np.testing.assert_array_equal(seen, g)
        np.testing.assert_allclose(p.data, s - 0.1 * 0.5 * g, rtol=1e-12)
        np.testing.assert_array_equal(after, p.data)
        np.testing.assert_array_equal(p.grad, g)  # hooks never modify p.grad
    opt.remove_hook(hook)
    assert opt.hooks == ()
    with pytest.raises(ConfigurationError, match="was not added"):
        opt.remove_hook(hook)
    with pytest.raises(ConfigurationError, match="expected an OptimizerHook, got function"):
        opt.add_hook(lambda optimizer, grads: grads)


def test_added_hooks_run_after_the_option_hooks(backend):
    order = []

    class Record(OptimizerHook):
        def before_update(self, optimizer, grads):
            order.append(float(np.sqrt(sum(float(np.sum(g * g)) for g in grads))))
            return grads

    opt = optim.SGD(_params(backend), lr=0.0, clip_grad_norm=1.0)
    opt.add_hook(Record())
    for p in opt.params:
        p.grad[...] = 10.0
    opt.step()
    assert order == [pytest.approx(1.0, rel=1e-5)]  # it saw the clipped gradients


@pytest.mark.parametrize("hook,args,match", [
    (L1Penalty, (-0.1,), "L1Penalty: l1"), (MaxNorm, (0.0,), "MaxNorm: max_norm"),
    (GradientClipping, (float("nan"),), "GradientClipping: max_norm")])
def test_hooks_validate_their_values(hook, args, match):
    with pytest.raises(ConfigurationError, match=match):
        hook(*args)


# ---------------------------------------------------------------------------------------
# declared hyperparameters
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_no_optimizer_repeats_a_constructor(name):
    cls = optim.get(name)
    assert "__init__" not in cls.__dict__
    signature = inspect.signature(cls)
    declared = {n: h.default for n, h in cls.hyperparameters.items()}
    assert list(signature.parameters)[1:len(declared) + 1] == list(declared)
    for n, default in declared.items():
        assert signature.parameters[n].default == default
    for n in ("l1", "max_norm", "clip_grad_norm"):
        assert signature.parameters[n].kind is inspect.Parameter.KEYWORD_ONLY


def test_adamw_declares_only_its_weight_decay_default(backend):
    assert set(optim.AdamW.__dict__) & {"__init__", "check_hyperparameters", "update"} == set()
    assert optim.AdamW.hyperparameters["weight_decay"].default == 1e-2
    assert optim.Adam.hyperparameters["weight_decay"].default == 0.0
    for n in ("lr", "betas", "eps"):
        assert optim.AdamW.hyperparameters[n].default == optim.Adam.hyperparameters[n].default
    opt = optim.AdamW(_params(backend))
    assert opt.get_config() == {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8,
                                "weight_decay": 1e-2, "l1": 0.0, "max_norm": None,
                                "clip_grad_norm": None}
    with pytest.raises(ConfigurationError, match=r"AdamW: betas\[1\] must be < 1.0"):
        optim.AdamW(_params(backend), betas=(0.9, 1.0))


def test_positional_hyperparameters_follow_the_declaration(backend):
    opt = optim.SGD(_params(backend), 0.5, 0.9, 0.0, True)
    assert (opt.lr, opt.momentum, opt.dampening, opt.nesterov) == (0.5, 0.9, 0.0, True)
    with pytest.raises(TypeError, match="multiple values for 'lr'"):
        optim.SGD(_params(backend), 0.5, lr=0.1)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['betas'\]"):
        optim.SGD(_params(backend), betas=(0.9, 0.9))


class SignSGD(optim.Optimizer):
    """A user optimizer declaring its hyperparameters: ``p -= lr * sign(g)``."""

    hyperparameters = Hyperparameters(lr=real(0.01, low=0.0),
                                      scale=real(1.0, low=0.0, low_open=True))
    state_keys = ()

    def update(self, p, grad, state):
        p.backend.assign(p.data, p.data - self.lr * self.scale * p.backend.xp.sign(grad))


def test_user_optimizer_from_declarations(backend):
    params = _params(backend)
    start = [np.array(p.data) for p in params]
    opt = SignSGD(params, scale=2.0, max_norm=100.0)
    assert optim.get("signsgd") is SignSGD
    grads = _grads(3, steps=1)[0]
    _train(opt, [grads])
    for p, s, g in zip(params, start, grads):
        np.testing.assert_allclose(p.data, s - 0.02 * np.sign(g), rtol=1e-12)
    config = json.loads(json.dumps(opt.get_config()))
    assert config == {"lr": 0.01, "scale": 2.0, "l1": 0.0, "max_norm": 100.0,
                      "clip_grad_norm": None}
    again = SignSGD(_params(backend), **config)
    again.load_state_dict(opt.state_dict())
    assert again.get_config() == config
    with pytest.raises(ConfigurationError, match="SignSGD: scale must be > 0.0"):
        SignSGD(params, scale=0)
