"""A run that stops (Ctrl-C, an exception in a layer or a callback, a non-finite loss)
leaves model, optimizer state and batch-norm statistics at its last completed step, and
says where in ``History.stopped``."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import dualnn as dn
from dualnn.errors import NonFiniteError

from ..support.invariants import snapshot, snapshots_equal

N, BATCH = 40, 8          # 5 steps per epoch


class Trigger(dn.Layer):
    """Identity that acts at training step ``at`` (counted over the whole fit).

    ``action``: ``"sigint"`` sends this process SIGINT during the forward (as Ctrl-C);
    ``"interrupt"`` raises KeyboardInterrupt in the forward; ``"backward"`` raises
    RuntimeError in the backward; ``"nan"`` returns NaN from the forward.
    """

    def __init__(self, at=0, action="sigint"):
        super().__init__()
        self.at, self.action, self.calls = at, action, 0

    def forward(self, x, training=False):
        if training:
            self.calls += 1
            if self.calls == self.at:
                if self.action == "sigint":
                    os.kill(os.getpid(), signal.SIGINT)
                elif self.action == "interrupt":
                    raise KeyboardInterrupt
                elif self.action == "nan":
                    return x * np.float32("nan")
        return x

    def backward(self, dy):
        if self.action == "backward" and self.calls == self.at:
            raise RuntimeError("boom")
        return dy


def build(trigger=None):
    dn.seed(0)
    model = dn.Sequential(dn.layers.Linear(4, 8), dn.layers.BatchNorm(8),
                          trigger or Trigger(), dn.layers.ReLU(), dn.layers.Linear(8, 3))
    return model, dn.optim.Adam(model.parameters(), lr=1e-2)


def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((N, 4)).astype(np.float32), rng.integers(0, 3, N)


def fit(model, opt, X, y, epochs, **kwargs):
    return dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, X, y, epochs=epochs,
                  batch_size=BATCH, shuffle=False, progress=False, **kwargs)


def fit_interrupted(model, opt, X, y, epochs, **kwargs):
    """fit, failing the test (not aborting the session) if KeyboardInterrupt escapes."""
    try:
        return fit(model, opt, X, y, epochs, **kwargs)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped fit instead of stopping it cleanly")


def reference(steps):
    """State after exactly ``steps`` uninterrupted steps (no shuffling)."""
    X, y = data()
    model, opt = build()
    full, rest = divmod(steps, N // BATCH)
    if full:
        fit(model, opt, X, y, full)
    if rest:
        fit(model, opt, X[:rest * BATCH], y[:rest * BATCH], 1)
    return snapshot(model, opt)


def _state(model, opt):
    snap = snapshot(model, opt)
    snap["epochs_trained"] = snap["rng"] = None  # compared separately
    return snap


def same_state(model, opt, steps):
    ref = reference(steps)
    ref["epochs_trained"] = ref["rng"] = None
    return snapshots_equal(_state(model, opt), ref)


def test_ctrl_c_finishes_the_step_and_returns_the_partial_history():
    X, y = data()
    model, opt = build(Trigger(at=8, action="sigint"))        # epoch 2, step 3
    history = fit_interrupted(model, opt, X, y, 4)
    assert history.stopped == {"epoch": 2, "step": 3, "reason": "interrupted"}
    assert history.epoch == [1] and model.epochs_trained == 1
    assert same_state(model, opt, 8)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_keyboard_interrupt_inside_a_step_rolls_that_step_back():
    X, y = data()
    model, opt = build(Trigger(at=8, action="interrupt"))
    history = fit_interrupted(model, opt, X, y, 4)
    assert history.stopped == {"epoch": 2, "step": 2, "reason": "interrupted"}
    assert same_state(model, opt, 7)


def test_an_error_in_backward_restores_batchnorm_statistics():
    X, y = data()
    model, opt = build(Trigger(at=3, action="backward"))
    with pytest.raises(RuntimeError, match="boom") as info:
        fit(model, opt, X, y, 2)
    assert info.value.history.stopped == {"epoch": 1, "step": 2,
                                          "reason": "RuntimeError: boom"}
    assert same_state(model, opt, 2)
    assert all(not np.asarray(p.grad).any() for p in model.parameters())


class FailAt(dn.callbacks.Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, run, epoch, logs):
        if epoch == self.epoch:
            raise ValueError("callback failed")


def test_a_failing_callback_leaves_the_completed_epoch():
    X, y = data()
    model, opt = build()
    with pytest.raises(ValueError, match="callback failed") as info:
        fit(model, opt, X, y, 4, callbacks=[FailAt(2)])
    history = info.value.history
    assert history.epoch == [1, 2] and model.epochs_trained == 2
    assert history.stopped == {"epoch": 2, "step": 5, "reason": "ValueError: callback failed"}
    assert same_state(model, opt, 10)


def test_nonfinite_loss_reports_the_last_completed_step():
    X, y = data()
    model, opt = build(Trigger(at=4, action="nan"))
    with pytest.raises(NonFiniteError) as info:
        fit(model, opt, X, y, 2)
    assert info.value.step == 4
    assert info.value.history.stopped["step"] == 3
    assert same_state(model, opt, 3)


def test_ctrl_c_with_model_checkpoint_leaves_a_loadable_checkpoint(tmp_path):
    X, y = data()
    model, opt = build(Trigger(at=8, action="sigint"))
    ck = dn.callbacks.ModelCheckpoint(tmp_path / "epoch-{epoch}.npz", monitor="loss")
    history = fit_interrupted(model, opt, X, y, 4, callbacks=[ck])
    assert history.stopped["reason"] == "interrupted"
    assert sorted(os.listdir(tmp_path)) == ["epoch-1.npz", "interrupted.npz"]
    restored, restored_opt = build()
    loaded = dn.load(tmp_path / "interrupted.npz", model=restored, optimizer=restored_opt)
    assert loaded.epoch == 1
    assert snapshots_equal(_state(restored, restored_opt), _state(model, opt))
