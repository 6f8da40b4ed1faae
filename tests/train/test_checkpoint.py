"""dn.save / dn.load: exact resume, rebuild, validation before change, atomicity."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest

import dualnn as dn
from dualnn.errors import CheckpointError

from .helpers import digits, mlp, states_equal

LOSS = dn.losses.SoftmaxCrossEntropy()


def _build():
    model = mlp(hidden=(32, 16), dropout=0.3)
    return model, dn.optim.Adam(model.parameters(), lr=3e-3)


def _train(model, opt, epochs, noise=0.05):
    data = digits()
    return dn.fit(model, LOSS, opt, data.X_train, data.y_train, epochs=epochs, batch_size=50,
                  progress=False, input_noise=noise,
                  callbacks=[dn.callbacks.StepLR(step_size=1, gamma=0.5)])


def test_resume_is_exact(tmp_path):
    path = tmp_path / "ck.npz"
    dn.seed(7)
    model, opt = _build()
    _train(model, opt, 2)
    straight = model.state_dict()
    straight_state = opt.state_dict()

    dn.seed(7)
    model, opt = _build()
    _train(model, opt, 1)
    dn.save(path, model, opt)

    # 1) into fresh objects built from another seed (different weights and RNG stream)
    dn.seed(123)
    fresh, fresh_opt = _build()
    ck = dn.load(path, model=fresh, optimizer=fresh_opt)
    assert ck.model is fresh and ck.optimizer is fresh_opt and ck.epoch == 1
    history = _train(fresh, fresh_opt, 1)
    assert history.epoch == [2]
    assert history["lr"] == [3e-3 * 0.5]              # the schedule continued
    assert states_equal(straight, fresh.state_dict())
    resumed_state = fresh_opt.state_dict()["state"]
    for index, entry in straight_state["state"].items():
        for key, value in entry.items():
            assert np.array_equal(np.asarray(value), np.asarray(resumed_state[index][key]))

    # 2) rebuilt from the file alone
    dn.seed(999)
    ck = dn.load(path)
    assert isinstance(ck.optimizer, dn.optim.Adam) and ck.epoch == 1
    assert ck.model.epochs_trained == 1
    _train(ck.model, ck.optimizer, 1)
    assert states_equal(straight, ck.model.state_dict())


def test_rebuilt_model_matches_and_predicts_the_same(tmp_path):
    data = digits()
    dn.seed(0)
    model = dn.Sequential(dn.layers.Linear(64, 20, dtype="float64"), dn.layers.Tanh(),
                          dn.layers.LeakyReLU(0.2), dn.layers.Linear(20, 10, dtype="float64"))
    path = tmp_path / "m.npz"
    dn.save(path, model, epoch=4)                     # no optimizer
    ck = dn.load(path)
    assert ck.optimizer is None and ck.epoch == 4
    assert [type(layer).__name__ for layer in ck.model] == ["Linear", "Tanh", "LeakyReLU",
                                                            "Linear"]
    assert ck.model[2].alpha == 0.2 and ck.model.dtype == "float64"
    np.testing.assert_array_equal(dn.predict(model, data.X_test), dn.predict(ck.model,
                                                                              data.X_test))
    # every entry loads without pickle and none is an object array
    with np.load(path, allow_pickle=False) as npz:
        assert all(npz[name].dtype != object for name in npz.files)
        meta = json.loads(npz["__meta__"].tobytes())
    assert meta["format"] == "dualnn-checkpoint" and meta["version"] == 1


def _saved(tmp_path):
    dn.seed(0)
    model, opt = _build()
    _train(model, opt, 1)
    path = tmp_path / "ck.npz"
    dn.save(path, model, opt)
    return path


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty", "npy", "no-meta",
                                    "missing", "bad-meta"])
def test_damaged_files_raise_checkpoint_error(tmp_path, damage):
    path = _saved(tmp_path)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        # corrupt bytes inside the largest stored array: the zip CRC catches it
        with zipfile.ZipFile(path) as zf:
            info = max(zf.infolist(), key=lambda i: i.file_size)
        middle = info.header_offset + 100 + info.file_size // 2
        path.write_bytes(raw[:middle] + bytes(b ^ 0xFF for b in raw[middle:middle + 64])
                         + raw[middle + 64:])
    elif damage == "garbage":
        path.write_bytes(os.urandom(5000))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "npy":
        np.save(path.with_suffix(".npy"), np.zeros(3))
        path = path.with_suffix(".npy")
    elif damage == "no-meta":
        np.savez(path, a=np.zeros(3))
    elif damage == "missing":
        path = tmp_path / "nope.npz"
    elif damage == "bad-meta":
        np.savez(path, __meta__=np.frombuffer(b'{"format": "other"}', np.uint8))
    dn.seed(0)
    model, opt = _build()
    before = model.state_dict()
    with pytest.raises(CheckpointError):
        dn.load(path, model=model, optimizer=opt)
    with pytest.raises(CheckpointError):
        dn.load(path)
    assert states_equal(before, model.state_dict())


@pytest.mark.parametrize("mismatch", ["width", "depth", "dtype", "optimizer-type",
                                      "no-optimizer-saved"])
def test_mismatch_raises_and_changes_nothing(tmp_path, mismatch):
    path = _saved(tmp_path)
    dn.seed(5)
    if mismatch == "width":
        model = mlp(hidden=(33, 16), dropout=0.3)
    elif mismatch == "depth":
        model = mlp(hidden=(32,), dropout=0.3)
    elif mismatch == "dtype":
        model = mlp(hidden=(32, 16), dropout=0.3, dtype="float64")
    else:
        model = mlp(hidden=(32, 16), dropout=0.3)
    if mismatch == "optimizer-type":
        opt = dn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = dn.optim.Adam(model.parameters(), lr=1e-3)
    if mismatch == "no-optimizer-saved":
        dn.save(path, *_build()[:1])                  # model only
    # give the optimizer some state to protect
    dn.fit(model, LOSS, opt, digits().X_train[:100], digits().y_train[:100], epochs=1,
           batch_size=50, progress=False)
    model_before, opt_before = model.state_dict(), opt.state_dict()
    rng_before = model.backend.get_rng_state()
    with pytest.raises(CheckpointError) as info:
        dn.load(path, model=model, optimizer=opt)
    assert str(path) in str(info.value)
    assert states_equal(model_before, model.state_dict())
    after = opt.state_dict()
    assert after["hyperparameters"] == opt_before["hyperparameters"]
    for index, entry in opt_before["state"].items():
        for key, value in entry.items():
            assert np.array_equal(np.asarray(value), np.asarray(after["state"][index][key]))
    assert model.epochs_trained == 1
    assert model.backend.get_rng_state() == rng_before


def test_save_is_atomic_and_cleans_up_on_failure(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    good = path.read_bytes()
    model, opt = _build()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", explode)
    with pytest.raises(CheckpointError, match="disk full"):
        dn.save(path, model, opt)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["ck.npz"]
    with pytest.raises(CheckpointError, match="does not exist"):
        dn.save(tmp_path / "no" / "such" / "dir.npz", model)


def test_full_disk_during_save_leaves_the_previous_checkpoint_byte_identical(tmp_path,
                                                                             monkeypatch):
    path = _saved(tmp_path)
    good = path.read_bytes()
    model, opt = _build()
    _train(model, opt, 1, noise=0.2)  # different weights: a real overwrite was attempted
    real_savez = np.savez

    def half_then_full(fh, **arrays):
        real_savez(fh, **{k: v for i, (k, v) in enumerate(arrays.items()) if i < 2})
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", half_then_full)
    with pytest.raises(CheckpointError, match="No space left on device.*unchanged") as info:
        dn.save(path, model, opt)
    assert isinstance(info.value, OSError)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["ck.npz"]  # no temporary file left behind
    monkeypatch.undo()
    restored, restored_opt = _build()
    dn.load(path, model=restored, optimizer=restored_opt)


def test_json_history_log_is_written_atomically(tmp_path, monkeypatch):
    """The JSON logger and checkpoints share one atomic writer: a failing write keeps the
    previous log whole."""
    from dualnn.training import atomic

    log = tmp_path / "log.json"
    model, opt = _build()
    data = digits()
    dn.fit(model, LOSS, opt, data.X_train[:200], data.y_train[:200], epochs=1, progress=False,
           callbacks=[dn.callbacks.JSONLogger(log)])
    good = log.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "full")

    monkeypatch.setattr(atomic.os, "fsync", full)
    logger = dn.callbacks.JSONLogger(log, append=True)
    with pytest.raises(OSError, match="full"):
        dn.fit(model, LOSS, opt, data.X_train[:200], data.y_train[:200], epochs=1,
               progress=False, callbacks=[logger])
    assert log.read_bytes() == good and os.listdir(tmp_path) == ["log.json"]


_KILL_SCRIPT = textwrap.dedent("""
    import sys
    import dualnn as dn
    path = sys.argv[1]
    dn.seed(0)
    model = dn.Sequential(dn.layers.Linear(1000, 1000), dn.layers.Linear(1000, 1000),
                          dn.layers.Linear(1000, 1000))
    epoch = int(sys.argv[2])
    while True:
        epoch += 1
        dn.save(path, model, epoch=epoch)
        if epoch == int(sys.argv[2]) + 1:
            print("saved", flush=True)
""")


def test_sigkill_during_save_leaves_a_loadable_checkpoint(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(_KILL_SCRIPT)
    path = tmp_path / "big.npz"
    rng = random.Random(0)
    epochs_seen, killed_mid_write = [], 0
    for round_ in range(12):  # until a kill has landed inside a write (timing-dependent)
        if round_ >= 3 and killed_mid_write:
            break
        proc = subprocess.Popen([sys.executable, str(script), str(path), str(1000 * round_)],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "saved"
            time.sleep(rng.uniform(0.05, 0.4))   # several saves of ~12 MB each, kill mid-way
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        ck = dn.load(path)                        # old or new, never partial
        assert 1000 * round_ < ck.epoch
        epochs_seen.append(ck.epoch)
        assert ck.model[0].weight.shape == (1000, 1000)
        temps = [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
        assert len(temps) <= 1, temps             # stale temps of dead savers get removed
        killed_mid_write += len(temps)
        assert sorted(set(os.listdir(tmp_path)) - set(temps)) == ["big.npz", "saver.py"]
    assert epochs_seen == sorted(epochs_seen)
    assert killed_mid_write >= 1                  # the kills did land inside a save


KILLED_FIT = textwrap.dedent("""
    import os, signal, sys
    import dualnn as dn
    from tests.train.test_checkpoint import _build, _train_with

    class KillDuringThirdEpoch(dn.callbacks.Callback):
        def on_step_begin(self, run, step):
            if run.epoch == 3 and run.step >= 2:
                os.kill(os.getpid(), signal.SIGKILL)   # no cleanup, no atexit, no flush

    dn.seed(7)
    model, opt = _build()
    _train_with(model, opt, 3, [dn.callbacks.ModelCheckpoint(sys.argv[1]),
                                KillDuringThirdEpoch()])
    print("not killed")
""")


def _train_with(model, opt, epochs, extra_callbacks=()):
    data = digits()
    return dn.fit(model, LOSS, opt, data.X_train, data.y_train, epochs=epochs, batch_size=50,
                  progress=False, input_noise=0.05,
                  callbacks=[dn.callbacks.StepLR(step_size=1, gamma=0.5), *extra_callbacks])


def test_sigkill_during_fit_then_resume_equals_an_uninterrupted_run(tmp_path):
    """A run killed mid-epoch leaves the last epoch's checkpoint; loading it and training
    the remaining epochs gives the uninterrupted run's weights and optimizer state."""
    path = tmp_path / "ck.npz"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", KILLED_FIT, str(path)], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert "not killed" not in proc.stdout

    dn.seed(7)
    model, opt = _build()
    _train_with(model, opt, 3)
    straight, straight_opt = model.state_dict(), opt.state_dict()

    dn.seed(12345)  # the checkpoint, not this seed, decides what happens next
    ck = dn.load(path)
    assert ck.epoch == 2
    history = _train_with(ck.model, ck.optimizer, 1)
    assert history.epoch == [3]
    assert states_equal(straight, ck.model.state_dict())
    resumed = ck.optimizer.state_dict()["state"]
    for index, entry in straight_opt["state"].items():
        for key, value in entry.items():
            assert np.array_equal(np.asarray(value), np.asarray(resumed[index][key]))
