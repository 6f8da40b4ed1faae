"""LossScaler's state machine (with injected overflows) and the Precision names."""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
from dualnn.errors import ConfigurationError
from dualnn.parameter import Parameter
from dualnn.precision import LossScaler, Precision


def _setup(backend):
    params = [Parameter(backend.store(np.ones((3, 2), dtype="float32")), backend, name="w"),
              Parameter(backend.store(np.ones(3, dtype="float32")), backend, name="b")]
    return params, dn.optim.SGD(params, lr=0.1)


def _fill_grads(backend, params, scale, overflow=False):
    for i, p in enumerate(params):
        g = np.full(p.shape, 0.5 * scale, dtype="float32")
        if overflow and i == 1:
            g[0] = np.inf
        p.grad = backend.store(g)


def test_state_machine_with_injected_overflows(backend):
    params, opt = _setup(backend)
    scaler = LossScaler(init_scale=8.0, growth_interval=3)
    history = []
    pattern = [False, True, False, False, False, False, True, True, False]
    for overflow in pattern:
        before = backend.to_host(params[0].data).copy()
        _fill_grads(backend, params, scaler.get_scale(), overflow)
        stepped = scaler.step(opt)
        after = backend.to_host(params[0].data)
        assert stepped == (not overflow)
        if overflow:
            np.testing.assert_array_equal(after, before)
        else:  # the update used the unscaled gradient 0.5
            np.testing.assert_allclose(after, before - 0.1 * 0.5, rtol=1e-6)
        scaler.update()
        history.append(scaler.get_scale())
    # 8 ok(1) -> inf: 4 -> ok,ok,ok: 8 -> ok(1) -> inf: 4 -> inf: 2 -> ok(1)
    assert history == [8.0, 4.0, 4.0, 4.0, 8.0, 8.0, 4.0, 2.0, 2.0]


def test_unscale_keeps_flag_on_device_and_divides(backend):
    params, _ = _setup(backend)
    scaler = LossScaler(init_scale=4.0)
    _fill_grads(backend, params, 4.0, overflow=True)
    scaler.unscale_(params)
    assert backend.owns(scaler.found_inf)  # a backend array, not a Python bool
    np.testing.assert_allclose(backend.to_host(params[0].grad), 0.5)
    with pytest.raises(ConfigurationError, match="already"):
        scaler.unscale_(params)
    scaler.update()
    assert scaler.get_scale() == 2.0


def test_scale_multiplies_and_disabled_passes_through():
    scaler = LossScaler(init_scale=16.0)
    np.testing.assert_array_equal(scaler.scale(np.array([1.0, 2.0])), [16.0, 32.0])
    off = LossScaler(enabled=False)
    x = np.array([1.0])
    assert off.scale(x) is x and off.get_scale() == 1.0


def test_state_dict_round_trip():
    a = LossScaler(init_scale=32.0, growth_interval=5)
    backend = dn.backend.NumpyBackend()
    params, opt = _setup(backend)
    for _ in range(3):
        _fill_grads(backend, params, a.get_scale())
        a.step(opt)
        a.update()
    b = LossScaler()
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict() == {
        "scale": 32.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 5,
        "growth_tracker": 3}
    with pytest.raises(ConfigurationError, match="growth_tracker"):
        b.load_state_dict({**a.state_dict(), "growth_tracker": 9})


@pytest.mark.parametrize("kwargs", [{"init_scale": 0}, {"growth_factor": 1.0},
                                    {"backoff_factor": 1.5}, {"growth_interval": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ConfigurationError):
        LossScaler(**kwargs)


def test_precision_names():
    assert Precision("float32").compute_itemsize == 4
    half = Precision("mixed_float16")
    assert (half.compute_dtype, half.param_dtype, half.loss_scaling) == \
        ("float16", "float32", True)
    assert Precision("mixed_bfloat16").loss_scaling is False
    assert Precision(half) == half
    with pytest.raises(ConfigurationError, match="mixed_float16"):
        Precision("fp16")
