"""Bad input gets a clear dualnn error and changes neither the model nor the optimizer."""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
from dualnn.errors import (
    ConfigurationError,
    DeviceMismatchError,
    DualnnError,
    NonFiniteInputError,
    ShapeError,
)


@pytest.fixture
def setup(backend, rng):
    dn.seed(0)
    model = dn.Sequential(dn.layers.Linear(4, 5), dn.layers.BatchNorm(5), dn.layers.ReLU(),
                          dn.layers.Linear(5, 3))
    opt = dn.optim.Adam(model.parameters(), lr=0.1)
    loss = dn.losses.SoftmaxCrossEntropy()
    x = backend.asarray(rng.standard_normal((6, 4)), "float32")
    y = backend.asarray(np.array([0, 1, 2, 0, 1, 2]))
    loss.forward(model.forward(x, training=True), y)
    model.backward(loss.backward())
    opt.step()
    opt.zero_grad()
    return model, opt, loss, x, y


def _snapshot(model, opt):
    return model.state_dict(), {k: v for k, v in _flat_state(opt).items()}


def _flat_state(opt):
    out = {}
    for index, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{index}.{key}"] = np.array(value, copy=True)
    return out


def _assert_unchanged(before, model, opt, buffers=True):
    params, state = before
    names = {name for name, _ in model.named_parameters()}
    for key, value in model.state_dict().items():
        if not buffers and key not in names:
            continue  # a forward in training moves batch norm's running statistics, as torch
        np.testing.assert_array_equal(value, params[key], err_msg=key)
    for key, value in _flat_state(opt).items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    for p in model.parameters():
        assert not np.asarray(p.backend.to_host(p.grad)).any()


def _step(model, opt, loss, x, y):
    loss.forward(model.forward(x, training=True), y)
    model.backward(loss.backward())
    opt.step()


@pytest.mark.parametrize("case,error,match", [
    ("features", ShapeError, r"expected 4 input features, got shape \(6, 3\)"),
    ("1d", ShapeError, r"2-D batch.*shape \(4,\)"),
    ("int", ShapeError, r"floating-point.*int64"),
    # Sequential's own input check: a NonFiniteInputError once it stops using ShapeError
    ("nan", (ShapeError, NonFiniteInputError), "NaN"),
    ("labels_range", ShapeError, r"\[0, 3\)"),
    ("labels_shape", ShapeError, r"shape \(6,\)"),
    ("float64", ShapeError, "float32 input"),
])
def test_bad_input_changes_nothing(backend, rng, setup, case, error, match):
    model, opt, loss, x, y = setup
    before = _snapshot(model, opt)
    host = rng.standard_normal((6, 4))
    if case == "features":
        x = backend.asarray(host[:, :3], "float32")
    elif case == "1d":
        x = backend.asarray(host[0], "float32")
    elif case == "int":
        x = backend.asarray(np.arange(24).reshape(6, 4))
    elif case == "nan":
        host[2, 1] = np.nan
        x = backend.asarray(host, "float32")
        if backend.device != "cpu":
            pytest.skip("finite check runs on the CPU only")
    elif case == "labels_range":
        y = backend.asarray(np.array([0, 1, 2, 3, 1, 2]))
    elif case == "labels_shape":
        y = backend.asarray(np.array([0, 1, 2]))
    elif case == "float64":
        x = backend.asarray(host, "float64")
    with pytest.raises(error, match=match) as info:
        _step(model, opt, loss, x, y)
    assert isinstance(info.value, DualnnError)
    _assert_unchanged(before, model, opt, buffers=not case.startswith("labels"))


def test_array_from_another_device_is_a_device_mismatch(rng):
    strict = pytest.importorskip("array_api_strict")
    model = dn.Sequential(dn.layers.Linear(4, 2))
    other = dn.backend.ArrayAPIBackend(strict)
    x = other.asarray(rng.standard_normal((3, 4)), "float32")
    with pytest.raises(DeviceMismatchError, match=r"expected an array on cpu"):
        model.forward(x)
    with pytest.raises(DeviceMismatchError):
        model.forward([[1.0, 2.0, 3.0, 4.0]])
    with dn.use_backend(other):
        strict_model = dn.Sequential(dn.layers.Linear(4, 2))
    with pytest.raises(DeviceMismatchError, match="array_api_strict"):
        strict_model.forward(np.ones((3, 4), dtype=np.float32))


def test_backward_with_wrong_gradient_shape(backend, setup):
    model, opt, loss, x, y = setup
    model.forward(x, training=True)
    with pytest.raises(ShapeError, match=r"expected a gradient of shape \(6, 3\)"):
        model.backward(backend.asarray(np.ones((6, 2)), "float32"))


@pytest.mark.parametrize("make,match", [
    (lambda: dn.layers.Linear(0, 3), "in_features"),
    (lambda: dn.layers.Linear(3, 2.5), "out_features"),
    (lambda: dn.layers.Linear(3, 2, init="bogus"), "unknown initializer"),
    (lambda: dn.layers.Linear(3, 2, dtype="float16"), "dtype"),
    (lambda: dn.layers.BatchNorm(3, momentum=2), "momentum"),
    (lambda: dn.layers.BatchNorm(3, eps=0), "eps"),
    (lambda: dn.Sequential(dn.layers.Linear(2, 2), "relu"), "not a dualnn Layer"),
    (lambda: dn.Sequential(dn.layers.Linear(2, 2), dn.layers.Linear(2, 2, dtype="float64")),
     "mix dtypes"),
    (lambda: dn.losses.MSE(reduction="avg"), "reduction"),
])
def test_bad_configuration(backend, make, match):
    with pytest.raises(ConfigurationError, match=match):
        make()


def test_load_state_dict_checks_everything_before_changing_anything(backend):
    model = dn.Sequential(dn.layers.Linear(3, 2), dn.layers.BatchNorm(2))
    good = model.state_dict()
    bad = dict(good)
    bad["0.weight"] = np.zeros((2, 3), dtype=np.float32)
    bad["1.gamma"] = np.zeros((3,), dtype=np.float32)
    with pytest.raises(ShapeError, match=r"'1.gamma': expected shape \(2,\) float32"):
        model.load_state_dict(bad)
    np.testing.assert_array_equal(model.state_dict()["0.weight"], good["0.weight"])
    wrong_dtype = dict(good, **{"0.bias": good["0.bias"].astype(np.float64)})
    with pytest.raises(ShapeError, match="float64"):
        model.load_state_dict(wrong_dtype)
    missing = {k: v for k, v in good.items() if k != "1.running_var"}
    with pytest.raises(ShapeError, match="missing"):
        model.load_state_dict(missing)
    with pytest.raises(ShapeError, match="unexpected"):
        model.load_state_dict(dict(good, extra=np.zeros(1)))
    zeroed = {k: np.zeros_like(v) for k, v in good.items()}
    model.load_state_dict(zeroed)
    assert not model.state_dict()["0.weight"].any()


def test_error_classes_say_what_they_are():
    """Non-finite data, bad labels and unreadable files have their own errors; code written
    against the classes raised before (``ShapeError`` for data and labels, ``OSError`` for
    files) keeps catching them."""
    from dualnn import errors

    for cls, builtin in [(errors.NonFiniteInputError, ValueError),
                         (errors.LabelError, ValueError),
                         (errors.DataFileError, OSError),
                         (errors.DataFileNotFoundError, FileNotFoundError)]:
        assert issubclass(cls, DualnnError) and issubclass(cls, builtin)
    for cls in (errors.NonFiniteInputError, errors.LabelError):
        assert issubclass(cls, ShapeError) and cls is not ShapeError
    assert not issubclass(errors.DataFileError, ShapeError)
    assert issubclass(errors.DataFileNotFoundError, errors.DataFileError)


def test_nonfinite_data_is_not_a_shape_error(rng):
    X = rng.standard_normal((5, 4)).astype(np.float32)
    X[3, 2] = np.inf
    model = dn.Sequential(dn.layers.Linear(4, 2))
    with pytest.raises(ValueError, match=r"predict: X contains NaN or infinite values \(first "
                                         r"in row 3, column 2: inf\)") as info:
        dn.predict(model, X)
    assert type(info.value).__name__ == "NonFiniteInputError"


def test_missing_data_file_is_a_file_not_found_error(tmp_path):
    model = dn.Sequential(dn.layers.Linear(4, 2))
    with pytest.raises(FileNotFoundError, match="predict: X: no such file") as info:
        dn.predict(model, str(tmp_path / "missing.npy"))
    assert isinstance(info.value, DualnnError)
