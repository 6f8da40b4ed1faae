"""The ``dualnn`` command: train/evaluate/predict/info and every error path."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import dualnn as dn
from dualnn.cli import main

SCRIPT = pathlib.Path(sys.executable).with_name("dualnn")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint from ``dualnn train --epochs 2`` (run once for the module)."""
    path = tmp_path_factory.mktemp("cli") / "small.npz"
    code = main(["train", "--epochs", "2", "--hidden", "32", "--no-progress",
                 "--output", str(path)])
    assert code == 0
    return path


def test_train_smoke_via_main(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "2", "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "test accuracy" in out.out and "trained in" in out.out
    saved = tmp_path / "dualnn-digits.npz"
    assert saved.exists() and str(saved) in out.out
    ck = dn.load(saved)
    assert ck.epoch == 2 and isinstance(ck.optimizer, dn.optim.Adam)
    sizes = [layer.out_features for layer in ck.model if hasattr(layer, "out_features")]
    assert sizes == [128, 128, 10]
    assert any(isinstance(layer, dn.layers.BatchNorm) for layer in ck.model)
    assert "Traceback" not in out.err


def test_train_options(tmp_path, capsys):
    path = tmp_path / "o.npz"
    assert main(["train", "--epochs", "1", "--hidden", "20,10", "--activation", "tanh",
                 "--no-batch-norm", "--dropout", "0.1", "--optimizer", "sgd", "--lr", "0.1",
                 "--batch-size", "32", "--seed", "3", "--output", str(path),
                 "--no-progress"]) == 0
    model = dn.load(path).model
    names = [type(layer).__name__ for layer in model]
    assert names == ["Linear", "Tanh", "Dropout", "Linear", "Tanh", "Dropout", "Linear"]
    assert "SGD lr=0.1" in capsys.readouterr().out


def test_console_script_subprocess(tmp_path):
    assert SCRIPT.exists(), "the dualnn console script is not installed in this venv"
    env = {**os.environ, "CI": "1"}
    result = subprocess.run([str(SCRIPT), "train", "--epochs", "2", "--output",
                             str(tmp_path / "s.npz")], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "test accuracy" in result.stdout and (tmp_path / "s.npz").exists()
    assert "epoch 1/2" not in result.stderr          # no progress bar without a terminal
    bad = subprocess.run([str(SCRIPT), "train", "--hidden", "12,abc"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.startswith("dualnn: error:") and bad.stderr.count("\n") == 1


def test_evaluate_and_predict(trained, tmp_path, capsys):
    assert main(["evaluate", str(trained)]) == 0
    assert "accuracy" in capsys.readouterr().out
    X = dn.datasets.load("digits").X_test[:6]
    np.save(tmp_path / "x.npy", X)
    np.savetxt(tmp_path / "x.csv", X, delimiter=",", header="h" * 3, comments="")
    assert main(["predict", str(trained), str(tmp_path / "x.npy")]) == 0
    classes = capsys.readouterr().out.split()
    expected = dn.predict(dn.load(trained).model, X).argmax(1)
    assert [int(c) for c in classes] == expected.tolist()
    assert main(["predict", str(trained), str(tmp_path / "x.csv"), "--output",
                 str(tmp_path / "out.npy")]) == 0
    assert np.load(tmp_path / "out.npy").shape == (6, 10)


def test_info_runs(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("dualnn", "python", "numpy", "numba", "cupy", "devices", "cuda kernels",
                "blas", "thread policy numba threading layer", "numba kernel cache",
                "huge pages for large arrays"):
        assert key in out, key
    assert dn.__version__ in out


def _error_cases(tmp_path, trained):
    empty = tmp_path / "mnist-empty"
    empty.mkdir()
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a checkpoint at all")
    bad_rows = tmp_path / "rows.npy"
    np.save(bad_rows, np.zeros((3, 5)))
    return {
        "unknown dataset": (["train", "--data", "cifar"], 2, "cifar"),
        "missing files": (["train", "--data", "mnist", "--data-dir", str(empty)], 1,
                          "train-images-idx3-ubyte"),
        "bad layer spec": (["train", "--hidden", "12,abc"], 2, "abc"),
        "bad dropout": (["train", "--dropout", "1.5"], 2, "dropout"),
        "unknown optimizer": (["train", "--optimizer", "adamax", "--epochs", "1"], 1,
                              "adamax"),
        "unknown activation": (["train", "--activation", "swish", "--epochs", "1"], 1,
                               "swish"),
        "unavailable device": (["train", "--device", "gpu"], 1, "GPU"),
        "unknown device": (["train", "--device", "tpu"], 1, "tpu"),
        "unreadable checkpoint": (["evaluate", str(garbage)], 1, "garbage.npz"),
        "missing checkpoint": (["evaluate", str(tmp_path / "none.npz")], 1, "none.npz"),
        "predict wrong features": (["predict", str(trained), str(bad_rows)], 1, "features"),
        "predict missing file": (["predict", str(trained), str(tmp_path / "no.csv")], 1,
                                 "no.csv"),
        "no command": ([], 2, "command"),
        "unknown command": (["fly"], 2, "fly"),
        "unknown option": (["train", "--bogus"], 2, "--bogus"),
    }


CASES = ["unknown dataset", "missing files", "bad layer spec", "bad dropout",
         "unknown optimizer", "unknown activation", "unavailable device", "unknown device",
         "unreadable checkpoint", "missing checkpoint", "predict wrong features",
         "predict missing file", "no command", "unknown command", "unknown option"]


@pytest.mark.parametrize("case", CASES)
def test_error_paths_print_one_line(case, tmp_path, trained, capsys):
    if case == "unavailable device" and len(dn.available_devices()) > 1:
        pytest.skip("this machine has a GPU")
    argv, code, needle = _error_cases(tmp_path, trained)[case]
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dualnn: error: ") and needle in lines[0]
    assert "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(dn.errors.CheckpointError):
        main(["evaluate", str(tmp_path / "none.npz"), "--debug"])


def test_cli_module_imports_only_stdlib_before_thread_policy():
    import ast

    import dualnn.cli

    tree = ast.parse(pathlib.Path(dualnn.cli.__file__).read_text())
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Call) \
                and getattr(node.value.func, "id", "") == "apply_thread_policy_env":
            break
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            assert module in ("os", "sys", "dualnn._threads", "__future__"), module
    else:
        pytest.fail("cli.py never calls apply_thread_policy_env() at module level")


def test_train_interrupted_saves_and_says_where(tmp_path, capsys, monkeypatch):
    import signal

    real_fit = dn.fit

    class CtrlC(dn.callbacks.Callback):
        def on_epoch_begin(self, run, epoch):
            if epoch == 2:
                os.kill(os.getpid(), signal.SIGINT)

    def fit_with_ctrl_c(*args, **kwargs):
        kwargs["callbacks"] = [CtrlC()]
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(dn, "fit", fit_with_ctrl_c)
    path = tmp_path / "i.npz"
    try:
        code = main(["train", "--epochs", "3", "--hidden", "16", "--no-progress",
                     "--output", str(path)])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped dualnn train")
    assert code == 130
    out = capsys.readouterr().out
    assert "interrupted after step 1 of epoch 2 (1 epoch(s) completed)" in out
    assert dn.load(path).epoch == 1
