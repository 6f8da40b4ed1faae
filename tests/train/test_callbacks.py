"""Callbacks (checkpoints, schedules, loggers) and the progress bar switch."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

import dualnn as dn
from dualnn.train import progress_enabled

from .helpers import digits, mlp


def _fit(model, opt, epochs, callbacks=(), validation=True, progress=False):
    data = digits()
    return dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, data.X_train[:400],
                  data.y_train[:400], epochs=epochs, batch_size=64, progress=progress,
                  validation_data=(data.X_test, data.y_test) if validation else None,
                  callbacks=callbacks)


@pytest.mark.parametrize("schedule, expected", [
    (dn.callbacks.StepLR(step_size=2, gamma=0.1), [1.0, 1.0, 0.1, 0.1, 0.01]),
    (dn.callbacks.ExponentialLR(gamma=0.5), [1.0, 0.5, 0.25, 0.125, 0.0625]),
    (dn.callbacks.CosineAnnealingLR(T_max=4, eta_min=0.0),
     [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2, 0.0]),
    (dn.callbacks.LinearWarmup(warmup_epochs=2, start_factor=0.5,
                               then=dn.callbacks.ExponentialLR(0.5)),
     [0.5, 0.75, 1.0, 0.5, 0.25]),
])
def test_lr_schedules_set_optimizer_lr_per_epoch(schedule, expected):
    dn.seed(0)
    model = mlp()
    opt = dn.optim.SGD(model.parameters(), lr=1.0)
    # lr 1.0 for SGD on standardized digits would diverge; scale the base down
    schedule.base_lr = 1e-3
    history = _fit(model, opt, 5, [schedule], validation=False)
    assert history["lr"] == pytest.approx([1e-3 * v for v in expected])


def test_schedule_resumes_from_a_checkpoint(tmp_path):
    dn.seed(0)
    model = mlp()
    opt = dn.optim.Adam(model.parameters(), lr=0.01)
    _fit(model, opt, 2, [dn.callbacks.ExponentialLR(0.5)], validation=False)
    dn.save(tmp_path / "c.npz", model, opt)
    ck = dn.load(tmp_path / "c.npz")
    assert ck.optimizer.initial_lr == 0.01 and ck.optimizer.lr == pytest.approx(0.005)
    h = _fit(ck.model, ck.optimizer, 2, [dn.callbacks.ExponentialLR(0.5)], validation=False)
    assert h.epoch == [3, 4] and h["lr"] == pytest.approx([0.0025, 0.00125])


def test_model_checkpoint_best_only_and_every_epoch(tmp_path):
    dn.seed(0)
    model = mlp()
    opt = dn.optim.Adam(model.parameters(), lr=1e-3)
    best = dn.callbacks.ModelCheckpoint(tmp_path / "best.npz", monitor="val_accuracy",
                                        save_best_only=True)
    each = dn.callbacks.ModelCheckpoint(str(tmp_path / "ep{epoch}-{val_loss:.3f}.npz"))
    history = _fit(model, opt, 3, [best, each])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len([f for f in files if f.startswith("ep")]) == 3
    best_epoch = history.epoch[int(np.argmax(history["val_accuracy"]))]
    ck = dn.load(tmp_path / "best.npz")
    assert ck.epoch == best_epoch
    data = digits()
    acc = dn.evaluate(ck.model, dn.losses.SoftmaxCrossEntropy(), data.X_test,
                      data.y_test)["accuracy"]
    assert acc == pytest.approx(max(history["val_accuracy"]))


@pytest.mark.parametrize("suffix", ["csv", "json"])
def test_history_logger(tmp_path, suffix):
    path = tmp_path / f"h.{suffix}"
    dn.seed(0)
    model = mlp()
    opt = dn.optim.Adam(model.parameters())
    _fit(model, opt, 2, [dn.callbacks.HistoryLogger(path)])
    _fit(model, opt, 1, [dn.callbacks.HistoryLogger(path, append=True)])
    if suffix == "json":
        records = json.loads(path.read_text())
    else:
        with open(path, newline="") as fh:
            records = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in records] == [1, 2, 3]
    assert all("val_loss" in r and "loss" in r for r in records)


def test_progress_switch(monkeypatch):
    class FakeTTY(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr("sys.stdout", FakeTTY())
    monkeypatch.setattr("sys.stderr", FakeTTY())
    assert progress_enabled(True) is True
    assert progress_enabled(False) is False
    monkeypatch.setenv("CI", "true")
    assert progress_enabled(True) is False
    monkeypatch.setenv("CI", "0")
    assert progress_enabled(True) is True
    monkeypatch.setattr("sys.stdout", io.StringIO())     # stdout redirected: not a TTY
    monkeypatch.delenv("CI")
    assert progress_enabled(True) is False


def test_progress_bar_draws_on_a_terminal_and_not_otherwise(monkeypatch):
    class FakeTTY(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("CI", raising=False)
    out, err = FakeTTY(), FakeTTY()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    dn.seed(0)
    model = mlp()
    opt = dn.optim.Adam(model.parameters())
    _fit(model, opt, 1, validation=False, progress=True)
    assert "epoch 1/1" in err.getvalue() and "samples_s" in err.getvalue()
    monkeypatch.setenv("CI", "1")
    err.seek(0)
    err.truncate()
    _fit(model, opt, 1, validation=False, progress=True)
    assert err.getvalue() == ""
