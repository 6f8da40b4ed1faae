"""The device flag: default, environment, scoped overrides, threads, auto, missing GPU."""

from __future__ import annotations

import builtins
import sys
import threading

import numpy as np
import pytest

import dualnn as dn
from dualnn.errors import ConfigurationError, DeviceUnavailableError


def test_default_is_cpu():
    assert dn.get_device() == "cpu"
    assert dn.get_backend().name == "numpy"
    assert dn.available_devices()[0] == "cpu"


def test_environment_variable_is_read_at_first_use(monkeypatch):
    monkeypatch.setenv("DUALNN_DEVICE", "cpu")
    assert dn.get_device() == "cpu"


def test_environment_variable_asking_for_missing_gpu_raises_at_first_use(monkeypatch):
    if len(dn.available_devices()) > 1:
        pytest.skip("a GPU is present")
    monkeypatch.setenv("DUALNN_DEVICE", "gpu")
    import dualnn  # noqa: F401  (import itself must not raise)

    with pytest.raises(DeviceUnavailableError, match="DUALNN_DEVICE='gpu'"):
        dn.get_backend()


def test_environment_variable_with_unknown_device_names_the_variable(monkeypatch):
    monkeypatch.setenv("DUALNN_DEVICE", "garbage")
    with pytest.raises(ConfigurationError, match=r"DUALNN_DEVICE='garbage'.*unknown device"):
        dn.get_backend()


def test_use_device_nests_and_restores():
    strict = pytest.importorskip("array_api_strict")
    other = dn.backend.ArrayAPIBackend(strict)
    assert dn.get_device() == "cpu"
    with dn.use_backend(other):
        assert dn.get_backend() is other
        with dn.use_device("cpu"):
            assert dn.get_backend().name == "numpy"
        assert dn.get_backend() is other
    assert dn.get_backend().name == "numpy"


def test_thread_started_inside_use_backend_sees_process_default():
    strict = pytest.importorskip("array_api_strict")
    other = dn.backend.ArrayAPIBackend(strict)
    seen = {}
    with dn.use_backend(other):
        worker = threading.Thread(target=lambda: seen.setdefault("b", dn.get_backend()))
        worker.start()
        worker.join()
        assert dn.get_backend() is other
    assert seen["b"].name == "numpy"


def test_auto_picks_cpu_without_gpu():
    if len(dn.available_devices()) > 1:
        pytest.skip("a GPU is present")
    assert dn.set_device("auto") == "cpu"


@pytest.mark.parametrize("spec", ["tpu", "gpu:x", "", 3])
def test_unknown_device_spelling(spec):
    with pytest.raises(ConfigurationError, match="device"):
        dn.set_device(spec)


def test_missing_cupy_message(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "cupy" or name.startswith("cupy."):
            raise ImportError("No module named 'cupy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(DeviceUnavailableError, match=r"CuPy is not installed.*dualnn\[gpu\]"):
        dn.set_device("gpu")
    with pytest.raises(DeviceUnavailableError, match="CuPy is not installed"):
        with dn.use_device("gpu"):
            pass
    assert dn.get_device() == "cpu"
    assert dn.available_devices() == ["cpu"]


class _FakeRuntime:
    def __init__(self, count=None, error=None):
        self.count, self.error = count, error

    def getDeviceCount(self):
        if self.error:
            raise self.error
        return self.count


class _FakeCupy:
    def __init__(self, runtime):
        self.cuda = type("cuda", (), {"runtime": runtime})()


def test_missing_driver_message(monkeypatch):
    fake = _FakeCupy(_FakeRuntime(error=RuntimeError("cudaErrorInsufficientDriver")))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(DeviceUnavailableError, match="driver is missing"):
        dn.set_device("gpu")


def test_no_device_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _FakeCupy(_FakeRuntime(count=0)))
    with pytest.raises(DeviceUnavailableError, match="reports no device"):
        dn.set_device("gpu:0")


def test_device_index_out_of_range(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _FakeCupy(_FakeRuntime(count=1)))
    with pytest.raises(DeviceUnavailableError, match="gpu:0..gpu:0"):
        dn.set_device("gpu:3")


def test_model_to_round_trip_keeps_parameters_and_optimizer_state():
    strict = pytest.importorskip("array_api_strict")
    other = dn.backend.ArrayAPIBackend(strict)
    dn.seed(0)
    model = dn.Sequential(dn.layers.Linear(3, 4), dn.layers.BatchNorm(4), dn.layers.ReLU(),
                          dn.layers.Linear(4, 2))
    opt = dn.optim.Adam(model.parameters(), lr=0.01)
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    loss = dn.losses.SoftmaxCrossEntropy()
    loss.forward(model.forward(model.backend.asarray(x), training=True), np.array([0, 1, 0, 1, 1]))
    model.backward(loss.backward())
    opt.step()
    before = model.state_dict()
    moment = np.array(model.parameters()[0].state["exp_avg"])
    model.to(other)
    assert all(p.backend is other and other.owns(p.data) for p in model.parameters())
    assert other.owns(model.parameters()[0].state["exp_avg"])
    assert other.owns(model[1].running_mean)
    model.to("cpu")
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    np.testing.assert_array_equal(model.parameters()[0].state["exp_avg"], moment)
    # Training continues on the CPU after the round trip.
    opt.step()


def test_seed_gives_same_initial_model_on_every_backend():
    strict = pytest.importorskip("array_api_strict")
    dn.seed(7)
    cpu_model = dn.layers.Linear(5, 3)
    other = dn.backend.ArrayAPIBackend(strict)
    dn.seed(7)
    with dn.use_backend(other):
        strict_model = dn.layers.Linear(5, 3)
    np.testing.assert_array_equal(cpu_model.state_dict()["weight"],
                                  strict_model.state_dict()["weight"])
