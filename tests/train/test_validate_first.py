"""fit/evaluate/predict check everything they can know about X, y and validation data
before any state changes, and their messages name the argument, the row and what was
expected."""

from __future__ import annotations

import re

import numpy as np
import pytest

import dualnn as dn
from dualnn.errors import ConfigurationError, LabelError, NonFiniteInputError, ShapeError

from ..support.invariants import check_call


def bn_model(n_in=4, n_out=3, dtype="float32"):
    dn.seed(0)
    return dn.Sequential(dn.layers.Linear(n_in, 8, dtype=dtype), dn.layers.BatchNorm(8, dtype=dtype),
                         dn.layers.ReLU(), dn.layers.Linear(8, n_out, dtype=dtype))


def data(n=40, n_in=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n_in)).astype(np.float32), rng.integers(0, classes, n)


def fit_fails(error, match, X, y, loss=None, model=None, **kwargs):
    """fit raises ``error`` matching ``match`` and changes nothing (BN statistics included)."""
    model = model or bn_model()
    opt = dn.optim.Adam(model.parameters())
    loss = loss or dn.losses.SoftmaxCrossEntropy()
    kwargs.setdefault("progress", False)
    kwargs.setdefault("batch_size", 8)
    outcome = check_call(lambda: dn.fit(model, loss, opt, X, y, epochs=2, **kwargs), model, opt)
    assert isinstance(outcome.error, error), outcome.error
    assert re.search(match, str(outcome.error)), str(outcome.error)
    return outcome.error


def test_float_labels_are_refused_before_the_first_forward():
    X, y = data()
    fit_fails(LabelError, r"y: SoftmaxCrossEntropy takes integer class labels, got dtype "
              r"float64", X, y.astype(np.float64))


def test_boolean_labels_name_bool_not_the_cast_dtype():
    X, y = data()
    err = fit_fails(LabelError, r"got dtype bool", X, y > 0)
    assert "float32" not in str(err)


def test_one_hot_labels_get_a_hint():
    X, y = data()
    fit_fails(LabelError, r"one-hot.*argmax", X, np.eye(3, dtype=np.float32)[y])


def test_label_out_of_range_names_the_row():
    X, y = data()
    y[17] = 3
    fit_fails(LabelError, r"y: class labels must lie in \[0, 3\).*got 3 in row 17", X, y)


def test_float64_overflowing_float32_is_caught_after_the_cast():
    X, y = data()
    X = X.astype(np.float64)
    X[23, 2] = 1e300
    fit_fails(NonFiniteInputError, r"fit: X .*row 23, column 2: 1e\+300, which overflows to inf "
              r"as float32", X, y)


def test_float_targets_overflowing_are_caught():
    X, _ = data()
    y = np.zeros((len(X), 3))
    y[5, 1] = -1e300
    fit_fails(NonFiniteInputError, r"fit: y .*row 5, column 1", X, y, loss=dn.losses.MSE())


def test_regression_target_shape_is_checked_before_training():
    X, _ = data()
    fit_fails(ShapeError, r"fit: y does not suit.*\(2, 3\).*\(2, 2\)", X,
              np.zeros((len(X), 2), np.float32), loss=dn.losses.MSE())


def test_one_row_dataset_with_batchnorm_is_an_error_not_a_zero_loss():
    X, y = data(n=1)
    fit_fails(ShapeError, r"X has 1 row.*BatchNorm.*no batch", X, y)


def test_one_row_batches_with_batchnorm_are_refused_up_front():
    X, y = data()
    fit_fails(ShapeError, r"batch_size=1 gives 1-row batches", X, y, batch_size=1)


@pytest.mark.parametrize("name", ["validation_batch_size", "log_interval"])
def test_loop_settings_are_checked_before_the_first_epoch(name):
    X, y = data()
    fit_fails(ConfigurationError, name, X, y, validation_data=data(n=10, seed=1), **{name: 0})


def test_drop_last_loader_without_a_full_batch_is_an_error():
    X, y = data(n=5)
    loader = dn.data.DataLoader(X, y, batch_size=8, drop_last=True)
    fit_fails(ShapeError, r"X has 5 row.*drop_last=True", loader, None)


def test_validation_data_is_named_in_messages():
    X, y = data()
    Xv, yv = data(n=10, seed=1)
    Xv[4, 0] = np.nan
    fit_fails(NonFiniteInputError, r"validation_data\[0\] .*row 4", X, y,
              validation_data=(Xv, yv))
    Xv, yv = data(n=10, seed=1)
    fit_fails(LabelError, r"validation_data\[1\]", X, y,
              validation_data=(Xv, yv.astype(np.float32)))


def test_monitor_without_validation_data_is_refused_before_training():
    X, y = data()
    fit_fails(ConfigurationError, r"EarlyStopping monitors 'val_loss'", X, y,
              callbacks=[dn.callbacks.EarlyStopping()])


def test_optimizer_of_another_model_is_refused():
    X, y = data()
    model = bn_model()
    other = bn_model()
    opt = dn.optim.SGD(other.parameters(), lr=0.1)
    with pytest.raises(ConfigurationError, match="not the model's"):
        dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, X, y, progress=False)


def test_evaluate_and_predict_validate_too():
    X, y = data()
    model = bn_model()
    loss = dn.losses.SoftmaxCrossEntropy()
    out = check_call(lambda: dn.evaluate(model, loss, X, y > 0), model)
    assert isinstance(out.error, LabelError) and "evaluate: y" in str(out.error)
    big = X.astype(np.float64)
    big[3, 3] = 1e39
    out = check_call(lambda: dn.predict(model, big), model)
    assert isinstance(out.error, NonFiniteInputError) and "row 3, column 3" in str(out.error)
    assert isinstance(out.error, ValueError)


def test_good_data_still_trains():
    X, y = data()
    model = bn_model()
    h = dn.fit(model, dn.losses.SoftmaxCrossEntropy(), dn.optim.Adam(model.parameters()), X, y,
               epochs=2, batch_size=8, progress=False, validation_data=data(n=10, seed=1))
    assert len(h) == 2 and h.stopped is None and model.epochs_trained == 2
    assert all(np.isfinite(h["loss"])) and h["loss"][0] > 0
