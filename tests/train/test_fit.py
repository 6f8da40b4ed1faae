"""dn.fit / evaluate / predict: accuracy, early stopping, history, validation, NaN guard."""

from __future__ import annotations

import math

import numpy as np
import pytest

import dualnn as dn
from dualnn.errors import (
    ConfigurationError,
    LabelError,
    NonFiniteError,
    NonFiniteInputError,
    ShapeError,
)

from .helpers import digits, mlp, states_equal


def test_digits_reference_network_reaches_96_percent():
    data = digits()
    dn.seed(0)
    model = mlp(hidden=(128, 128))
    opt = dn.optim.Adam(model.parameters(), lr=1e-3)
    loss = dn.losses.SoftmaxCrossEntropy()
    history = dn.fit(model, loss, opt, data.X_train, data.y_train, epochs=30, batch_size=64,
                     progress=False)
    scores = dn.evaluate(model, loss, data.X_test, data.y_test)
    assert scores["accuracy"] >= 0.96, scores
    assert history.epoch == list(range(1, 31))
    assert history["loss"][-1] < history["loss"][0]
    assert model.epochs_trained == 30
    # predict agrees with evaluate's accuracy
    logits = dn.predict(model, data.X_test, batch_size=100)
    assert isinstance(logits, np.ndarray) and logits.shape == (len(data.X_test), 10)
    assert np.mean(logits.argmax(1) == data.y_test) == pytest.approx(scores["accuracy"])


def test_early_stopping_restores_the_best_epoch():
    data = digits()
    rng = np.random.default_rng(0)
    # Validation labels are a random relabelling: as the model fits the training labels,
    # the validation loss gets worse after the first epochs.
    X_val = data.X_test
    y_val = rng.permutation(data.y_test)
    dn.seed(0)
    model = mlp(hidden=(64,), batch_norm=False)
    opt = dn.optim.Adam(model.parameters(), lr=1e-2)
    loss = dn.losses.SoftmaxCrossEntropy()
    stop = dn.callbacks.EarlyStopping(monitor="val_loss", patience=2)
    history = dn.fit(model, loss, opt, data.X_train, data.y_train, epochs=30, batch_size=64,
                     validation_data=(X_val, y_val), callbacks=[stop], progress=False)
    val = history["val_loss"]
    best = int(np.argmin(val))
    assert history.stopped_early and len(history) < 30
    assert stop.best_epoch == history.epoch[best] != history.epoch[-1]
    assert stop.stopped_epoch == history.epoch[-1]
    restored = dn.evaluate(model, loss, X_val, y_val)["loss"]
    assert restored == pytest.approx(val[best], rel=1e-6)
    assert restored < val[-1]


def test_history_fields_and_epoch_numbers_continue():
    data = digits()
    dn.seed(1)
    model = mlp()
    opt = dn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss = dn.losses.SoftmaxCrossEntropy()
    h1 = dn.fit(model, loss, opt, data.X_train, data.y_train, epochs=2, batch_size=128,
                validation_data=(data.X_test, data.y_test), progress=False)
    assert set(h1.history) == {"loss", "accuracy", "val_loss", "val_accuracy",
                               "samples_per_sec", "epoch_time", "lr"}
    assert all(len(v) == 2 for v in h1.history.values())
    assert all(0 <= a <= 1 for a in h1["accuracy"] + h1["val_accuracy"])
    assert all(s > 0 for s in h1["samples_per_sec"])
    h2 = dn.fit(model, loss, opt, data.X_train, data.y_train, epochs=3, batch_size=128,
                progress=False)
    assert h2.epoch == [3, 4, 5] and model.epochs_trained == 5
    assert "val_loss" not in h2
    assert h2.to_dict()["epoch"] == [3, 4, 5]


def test_regression_targets_have_no_accuracy():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 5))
    y = (X @ rng.standard_normal((5, 2))).astype(np.float64)
    dn.seed(0)
    model = dn.Sequential(dn.layers.Linear(5, 2))
    opt = dn.optim.Adam(model.parameters(), lr=0.05)
    h = dn.fit(model, dn.losses.MSE(), opt, X, y, epochs=20, batch_size=32, progress=False)
    assert "accuracy" not in h and h["loss"][-1] < h["loss"][0] * 0.1
    scores = dn.evaluate(model, dn.losses.MSE(), X, y)
    assert set(scores) == {"loss"}


def test_batchnorm_model_drops_a_final_one_row_batch():
    data = digits()
    X, y = data.X_train[:129], data.y_train[:129]   # 129 = 2 * 64 + 1
    dn.seed(0)
    model = mlp()
    opt = dn.optim.Adam(model.parameters())
    h = dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, X, y, epochs=2, batch_size=64,
               progress=False)
    assert len(h) == 2
    assert opt.params[0].state["step"] == 4          # 2 batches per epoch, the 1-row one dropped
    dn.seed(0)
    plain = mlp(batch_norm=False)
    opt2 = dn.optim.Adam(plain.parameters())
    dn.fit(plain, dn.losses.SoftmaxCrossEntropy(), opt2, X, y, epochs=2, batch_size=64,
           progress=False)
    assert opt2.params[0].state["step"] == 6          # without BatchNorm: ceil(129/64) = 3


def test_fit_is_reproducible_and_input_noise_changes_it():
    data = digits()

    def run(noise):
        dn.seed(3)
        model = mlp(dropout=0.2)
        opt = dn.optim.Adam(model.parameters())
        dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, data.X_train, data.y_train,
               epochs=2, batch_size=64, progress=False, input_noise=noise)
        return model.state_dict()

    assert states_equal(run(0.0), run(0.0))
    assert states_equal(run(0.1), run(0.1))
    assert not states_equal(run(0.0), run(0.1))


def test_fit_accepts_a_dataloader_and_float64_models():
    data = digits()
    dn.seed(0)
    model = mlp(dtype="float64")
    opt = dn.optim.Adam(model.parameters())
    loader = dn.data.DataLoader(data.X_train, data.y_train, batch_size=100, shuffle=True)
    h = dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, loader, epochs=2, progress=False)
    assert len(h) == 2 and model.parameters()[0].data.dtype == np.float64
    assert dn.predict(model, data.X_test[:7]).dtype == np.float64


@pytest.mark.parametrize("case, error, match", [
    ("1d", ShapeError, "2-D"),
    ("nan", NonFiniteInputError, "NaN"),
    ("length", ShapeError, "differ in length"),
    ("features", ShapeError, "expects 64 features"),
    ("labels", LabelError, r"\[0, 10\)"),
    ("strings", ShapeError, "castable to float"),
    ("empty", ShapeError, "no rows"),
])
def test_bad_data_is_rejected_up_front(case, error, match):
    data = digits()
    X, y = data.X_train[:100].copy(), data.y_train[:100].copy()
    if case == "1d":
        X = X[:, 0]
    elif case == "nan":
        X[57, 3] = np.nan
    elif case == "length":
        y = y[:-1]
    elif case == "features":
        X = X[:, :60]
    elif case == "labels":
        y[5] = 10
    elif case == "strings":
        X = X.astype(str)
    elif case == "empty":
        X, y = X[:0], y[:0]
    dn.seed(0)
    model = mlp()
    before = model.state_dict()
    opt = dn.optim.Adam(model.parameters())
    with pytest.raises(error, match=match) as info:
        dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, X, y, epochs=1, batch_size=32,
               progress=False)
    assert isinstance(info.value, ValueError)  # every one of them: bad values of an argument
    assert states_equal(before, model.state_dict())
    assert model.epochs_trained == 0


def test_bad_fit_arguments():
    data = digits()
    model = mlp()
    opt = dn.optim.Adam(model.parameters())
    loss = dn.losses.SoftmaxCrossEntropy()
    with pytest.raises(ConfigurationError, match="epochs"):
        dn.fit(model, loss, opt, data.X_train, data.y_train, epochs=-1, progress=False)
    with pytest.raises(ConfigurationError, match="batch_size"):
        dn.fit(model, loss, opt, data.X_train, data.y_train, batch_size=0, progress=False)
    with pytest.raises(ConfigurationError, match="validation_data"):
        dn.fit(model, loss, opt, data.X_train, data.y_train, validation_data=data.X_test,
               progress=False)
    with pytest.raises(ConfigurationError, match="val_loss"):
        dn.fit(model, loss, opt, data.X_train, data.y_train, progress=False,
               callbacks=[dn.callbacks.EarlyStopping()])


# ---------------------------------------------------------------------------------- NaN guard

class Recorder(dn.Layer):
    """Identity that keeps a copy of the model's state when training step ``at`` begins."""

    def __init__(self, at):
        super().__init__()
        self.at = at
        self.calls = 0
        self.model = None
        self.snapshot = None

    def forward(self, x, training=False):
        if training:
            self.calls += 1
            if self.calls == self.at:
                self.snapshot = self.model.state_dict()
        return x

    def backward(self, dy):
        return dy


class PoisonAt(dn.Layer):
    """Identity that poisons training step ``at``.

    ``where="backward"``: its backward returns NaN (the gradients of the layers before it
    go bad). ``where="forward"``: its output is NaN from that step on.
    """

    def __init__(self, at=5, where="backward"):
        super().__init__()
        self.at = at
        self.where = where
        self.calls = 0
        self.poisoned = False

    def forward(self, x, training=False):
        if training:
            self.calls += 1
            self.poisoned = self.poisoned or self.calls == self.at
        if self.where == "forward" and self.poisoned:
            return x * np.float32("nan")
        return x

    def backward(self, dy):
        if self.where == "backward" and self.calls == self.at:
            return dy * np.float32("nan")
        return dy


@pytest.mark.parametrize("where", ["backward", "forward"])
def test_nonfinite_stops_with_epoch_step_layer_and_keeps_last_good_weights(where):
    data = digits()
    dn.seed(0)
    at = 30                                        # 23 steps per epoch: epoch 2, step 7
    recorder, poison = Recorder(at), PoisonAt(at, where)
    model = dn.Sequential(recorder, dn.layers.Linear(64, 32), dn.layers.BatchNorm(32),
                          dn.layers.ReLU(), poison, dn.layers.Linear(32, 10))
    recorder.model = model
    opt = dn.optim.Adam(model.parameters(), lr=1e-3)
    with pytest.raises(NonFiniteError) as info:
        dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, data.X_train, data.y_train,
               epochs=3, batch_size=64, progress=False)
    err = info.value
    assert (err.epoch, err.step) == (2, 7)
    assert "epoch 2" in str(err) and "step 7" in str(err)
    if where == "backward":
        assert err.layer == "1 (Linear)" and "1 (Linear)" in str(err)
    else:
        assert "loss" in str(err) and err.layer == "4 (PoisonAt)"
    # parameters AND batch-norm running statistics of the last good step
    assert states_equal(recorder.snapshot, model.state_dict())
    assert all(np.isfinite(v).all() for v in model.state_dict().values())
    assert model.epochs_trained == 1


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
def test_huge_learning_rate_raises_nonfinite():
    data = digits()
    dn.seed(0)
    model = mlp(batch_norm=False)
    opt = dn.optim.SGD(model.parameters(), lr=1e30)
    with pytest.raises(NonFiniteError) as info:
        dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, data.X_train, data.y_train,
               epochs=5, batch_size=64, progress=False)
    assert info.value.epoch == 1 and info.value.step >= 1
    assert all(np.isfinite(v).all() for v in model.state_dict().values())


def test_history_lists_stay_aligned():
    h = dn.History()
    h.append(1, {"loss": 1.0})
    h.append(2, {"loss": 0.5, "val_loss": 0.7})
    assert h["val_loss"][1] == 0.7 and math.isnan(h["val_loss"][0])
    assert h.last() == {"loss": 0.5, "val_loss": 0.7}


def test_device_style_interval_guard_matches_and_detects():
    """The GPU code path (running loss kept on the device, read once per log interval),
    exercised on the CPU with check_finite=False."""
    data = digits()

    def run(**kwargs):
        dn.seed(2)
        model = mlp()
        opt = dn.optim.Adam(model.parameters())
        h = dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, data.X_train, data.y_train,
                   epochs=2, batch_size=64, progress=False, **kwargs)
        return h, model.state_dict()

    h1, s1 = run()
    h2, s2 = run(check_finite=False, log_interval=5)
    assert states_equal(s1, s2)
    assert h1["loss"] == pytest.approx(h2["loss"], rel=1e-6)
    assert h1["accuracy"] == h2["accuracy"]

    dn.seed(0)
    poison = PoisonAt(at=30, where="forward")
    model = dn.Sequential(dn.layers.Linear(64, 32), dn.layers.ReLU(), poison,
                          dn.layers.Linear(32, 10))
    opt = dn.optim.Adam(model.parameters())
    with pytest.raises(NonFiniteError) as info:
        dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, data.X_train, data.y_train,
               epochs=3, batch_size=64, progress=False, check_finite=False, log_interval=5)
    assert info.value.epoch == 2 and info.value.step == 10      # first read after step 7
    assert "between steps 6 and 10" in str(info.value)
