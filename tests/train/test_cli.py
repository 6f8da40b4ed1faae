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


# ---------------------------------------------------------------------------------- data files

def _write_csv(path, n=80, seed=0):
    """Features on very different scales and text labels (``classes`` sorted by name)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * [1.0, 100.0, 0.01] + [0.0, 500.0, 3.0]
    y = np.where(X[:, 0] + (X[:, 1] - 500) / 100 > 0, "yes", "no")
    lines = ["a,b,c,answer"] + [f"{r[0]:.6f},{r[1]:.6f},{r[2]:.6f},{label}"
                                for r, label in zip(X, y)]
    path.write_text("\n".join(lines) + "\n")
    return X, y


FAST = ["--epochs", "3", "--hidden", "8", "--batch-size", "16", "--no-progress"]


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """``dualnn train --data x.csv --label answer --standardize --plot`` run once."""
    folder = tmp_path_factory.mktemp("csv")
    X, y = _write_csv(folder / "x.csv")
    ckpt = folder / "x.npz"
    code = main(["train", "--data", str(folder / "x.csv"), "--label", "answer",
                 "--standardize", "--plot", str(folder / "curves.png"), "--output", str(ckpt),
                 *FAST])
    assert code == 0
    return folder, X, y, ckpt


def test_train_csv_saves_standardization_and_plot(csv_run, capsys):
    from dualnn.data.files import load_data_file

    folder, _, _, ckpt = csv_run
    expected = load_data_file(folder / "x.csv", label="answer", standardize=True)
    ck = dn.load(ckpt)
    np.testing.assert_array_equal(ck.extra["standardize_mean"], expected.mean)
    np.testing.assert_array_equal(ck.extra["standardize_std"], expected.std)
    assert ck.extra["classes"].tolist() == ["no", "yes"]
    assert ck.model[0].in_features == 3 and ck.model[-1].out_features == 2
    png = (folder / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_predict_applies_the_saved_standardization(csv_run, capsys):
    folder, X, _, ckpt = csv_run
    rows = folder / "rows.csv"
    np.savetxt(rows, X[:7], delimiter=",")
    assert main(["predict", str(ckpt), str(rows)]) == 0
    printed = capsys.readouterr().out.split()
    ck = dn.load(ckpt)
    scaled = (X[:7] - ck.extra["standardize_mean"]) / ck.extra["standardize_std"]
    expected = np.array(["no", "yes"])[dn.predict(ck.model, scaled).argmax(1)]
    assert printed == expected.tolist()
    assert main(["predict", str(ckpt), str(rows), "--output", str(folder / "o.npy")]) == 0
    np.testing.assert_allclose(np.load(folder / "o.npy"), dn.predict(ck.model, scaled))
    raw = dn.predict(ck.model, X[:7])  # unscaled rows would give other outputs
    assert not np.allclose(raw, np.load(folder / "o.npy"))


def test_evaluate_a_data_file_like_training(csv_run, capsys):
    from dualnn.data.files import load_data_file

    folder, _, _, ckpt = csv_run
    assert main(["evaluate", str(ckpt), "--data", str(folder / "x.csv"), "--label",
                 "answer"]) == 0
    out = capsys.readouterr().out
    data = load_data_file(folder / "x.csv", label="answer", standardize=True)
    scores = dn.evaluate(dn.load(ckpt).model, dn.losses.SoftmaxCrossEntropy(), data.X_test,
                         data.y_test)
    assert f"loss {scores['loss']:.4f}" in out and f"({len(data.X_test)} samples" in out


def test_train_npz_and_npy_pair(tmp_path, capsys):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) * 2  # classes 0 and 2: three outputs
    np.savez(tmp_path / "d.npz", X=X, y=y, X_test=X[:10], y_test=y[:10])
    assert main(["train", "--data", str(tmp_path / "d.npz"), "--output",
                 str(tmp_path / "a.npz"), *FAST]) == 0
    out = capsys.readouterr().out
    assert "on d (60 train / 10 test)" in out and "test accuracy" in out
    ck = dn.load(tmp_path / "a.npz")
    assert ck.model[-1].out_features == 3 and ck.extra == {}
    np.save(tmp_path / "train_X.npy", X)
    np.save(tmp_path / "train_y.npy", y)
    assert main(["train", "--data", str(tmp_path / "train_X.npy"), "--test-split", "0",
                 "--output", str(tmp_path / "b.npz"), *FAST]) == 0
    out = capsys.readouterr().out
    assert "on train (60 train / 0 test)" in out and "no test set" in out


def test_export_matches_the_model(trained, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    target = tmp_path / "m.onnx"
    assert main(["export", str(trained), str(target), "--opset", "13"]) == 0
    assert str(target) in capsys.readouterr().out
    X = dn.datasets.load("digits").X_test[:5].astype(np.float32)
    session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": X})
    np.testing.assert_allclose(got, dn.predict(dn.load(trained).model, X), rtol=1e-4,
                               atol=1e-5)
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Doubling(dn.Layer):
    """A registered layer without an ONNX translation."""

    def forward(self, x, training=True):
        return 2 * x

    def backward(self, dy):
        return 2 * dy


def test_export_subprocess_and_unexportable_layer(tmp_path):
    pytest.importorskip("onnx")
    model = dn.Sequential(dn.layers.Linear(3, 2), Doubling())
    dn.save(tmp_path / "u.npz", model)
    target = tmp_path / "u.onnx"
    assert main(["export", str(tmp_path / "u.npz"), str(target)]) == 1
    assert not target.exists() and sorted(os.listdir(tmp_path)) == ["u.npz"]
    env = {**os.environ, "CI": "1"}
    result = subprocess.run([str(SCRIPT), "export", str(tmp_path / "none.npz"),
                             str(target)], check=False, capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("dualnn: error:") and "none.npz" in result.stderr
    assert not target.exists()


def test_export_keeps_an_existing_file_when_it_fails(tmp_path, capsys):
    pytest.importorskip("onnx")
    model = dn.Sequential(dn.layers.Linear(3, 2), Doubling())
    dn.save(tmp_path / "u.npz", model)
    target = tmp_path / "old.onnx"
    target.write_bytes(b"previous")
    assert main(["export", str(tmp_path / "u.npz"), str(target)]) == 1
    assert target.read_bytes() == b"previous"
    assert "Doubling" in capsys.readouterr().err


def _file_error_cases(tmp_path, trained):
    _write_csv(tmp_path / "ok.csv", n=30)
    (tmp_path / "ragged.csv").write_text("a,b,y\n1,2,0\n3,4\n")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "noy.npz", X=np.zeros((10, 2)))
    np.savez(tmp_path / "float.npz", X=np.zeros((10, 2)), y=np.linspace(0, 1, 10))
    np.savez(tmp_path / "neg.npz", X=np.zeros((10, 2)), y=np.arange(10) - 3)
    (tmp_path / "notckpt.npz").write_bytes(b"garbage")
    np.save(tmp_path / "wide.npy", np.zeros((2, 9)))
    ok = str(tmp_path / "ok.csv")
    out = ["--output", str(tmp_path / "never.npz")]
    return {
        "missing data file": (["train", "--data", str(tmp_path / "gone.csv")], 1,
                              "gone.csv: no such file"),
        "missing npy partner": (["train", "--data", str(tmp_path / "wide.npy")], 1, "wide.npy"),
        "ragged csv": (["train", "--data", str(tmp_path / "ragged.csv")], 1,
                       "ragged.csv: ragged CSV row 3"),
        "corrupt npz": (["train", "--data", str(tmp_path / "junk.npz")], 1,
                        "junk.npz: cannot read"),
        "npz without y": (["train", "--data", str(tmp_path / "noy.npz")], 1,
                          "noy.npz: missing array y"),
        "float labels": (["train", "--data", str(tmp_path / "float.npz")], 1,
                         "float.npz: dualnn train needs one integer class label"),
        "negative labels": (["train", "--data", str(tmp_path / "neg.npz")], 1,
                            "neg.npz: class labels must be >= 0"),
        "unknown label column": (["train", "--data", ok, "--label", "colour"], 1,
                                 "no column 'colour'"),
        "label on a dataset": (["train", "--label", "y"], 2, "--label applies to --data files"),
        "standardize on a dataset": (["train", "--data", "digits", "--standardize"], 2,
                                     "--standardize"),
        "bad test split": (["train", "--data", ok, "--test-split", "1.5"], 2, "test split"),
        "plot format": (["train", "--data", ok, "--plot", str(tmp_path / "c.xyz"), *out], 1,
                        "unknown image format 'xyz'"),
        "plot folder": (["train", "--data", ok, "--plot", str(tmp_path / "no" / "c.png"),
                         *out], 1, "does not exist"),
        "evaluate without test rows": (["evaluate", str(trained), "--data", ok,
                                        "--test-split", "0"], 2, "no test rows"),
        "export missing checkpoint": (["export", str(tmp_path / "none.npz"),
                                       str(tmp_path / "m.onnx")], 1, "none.npz"),
        "export corrupt checkpoint": (["export", str(tmp_path / "notckpt.npz"),
                                       str(tmp_path / "m.onnx")], 1, "notckpt.npz"),
        "export old opset": (["export", str(trained), str(tmp_path / "m.onnx"), "--opset",
                              "9"], 1, "opset must be an int >= 13"),
        "export missing folder": (["export", str(trained), str(tmp_path / "no" / "m.onnx")],
                                  1, "No such file"),
    }


FILE_CASES = ["missing data file", "missing npy partner", "ragged csv", "corrupt npz",
              "npz without y", "float labels", "negative labels", "unknown label column",
              "label on a dataset", "standardize on a dataset", "bad test split",
              "plot format", "plot folder", "evaluate without test rows",
              "export missing checkpoint", "export corrupt checkpoint", "export old opset",
              "export missing folder"]


@pytest.mark.parametrize("case", FILE_CASES)
def test_data_file_and_export_errors_print_one_line(case, tmp_path, trained, capsys):
    argv, code, needle = _file_error_cases(tmp_path, trained)[case]
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dualnn: error: ") and needle in lines[0], lines[0]
    assert not (tmp_path / "never.npz").exists()  # refused before training
    assert not (tmp_path / "m.onnx").exists()


def test_predict_wrong_width_with_standardization(csv_run, tmp_path, capsys):
    _, _, _, ckpt = csv_run
    np.save(tmp_path / "w.npy", np.zeros((2, 5)))
    assert main(["predict", str(ckpt), str(tmp_path / "w.npy")]) == 1
    err = capsys.readouterr().err
    assert "w.npy" in err and "5 features" in err and "trained on 3 features" in err


def test_data_file_errors_are_the_data_file_family(tmp_path):
    from dualnn.data.files import load_data_file
    from dualnn.errors import DataFileError, DataFileFormatError, DataFileNotFoundError

    with pytest.raises(DataFileNotFoundError) as missing:
        load_data_file(tmp_path / "gone.csv")
    assert isinstance(missing.value, FileNotFoundError)
    (tmp_path / "r.csv").write_text("1,2,0\n3,4\n")
    with pytest.raises(DataFileFormatError) as ragged:
        load_data_file(tmp_path / "r.csv")
    assert isinstance(ragged.value, DataFileError) and isinstance(ragged.value, dn.errors.ShapeError)


# ---------------------------------------------------------------------------------- checkpoint extra

def test_checkpoint_extra_round_trip_and_old_files(tmp_path):
    import json
    import zipfile

    model = dn.Sequential(dn.layers.Linear(3, 2))
    mean = np.array([1.0, 2.0, 3.0])
    dn.save(tmp_path / "e.npz", model, extra={"mean": mean, "names": np.array(["a", "bc"])})
    ck = dn.load(tmp_path / "e.npz")
    np.testing.assert_array_equal(ck.extra["mean"], mean)
    assert ck.extra["names"].tolist() == ["a", "bc"]
    dn.save(tmp_path / "plain.npz", model)
    assert dn.load(tmp_path / "plain.npz").extra == {}
    with zipfile.ZipFile(tmp_path / "plain.npz") as archive:
        assert not [n for n in archive.namelist() if n.startswith("extra/")]
    # a file whose metadata lists an extra array it does not hold is corrupt
    with zipfile.ZipFile(tmp_path / "e.npz") as archive:
        meta = json.loads(np.load(tmp_path / "e.npz")["__meta__"].tobytes())
        with zipfile.ZipFile(tmp_path / "cut.npz", "w") as cut:
            for name in archive.namelist():
                if name != "extra/mean.npy":
                    cut.writestr(name, archive.read(name))
    assert "mean" in meta["extra"]
    with pytest.raises(dn.errors.CheckpointError, match="extra/mean is missing"):
        dn.load(tmp_path / "cut.npz")


def test_checkpoint_extra_refuses_objects(tmp_path):
    model = dn.Sequential(dn.layers.Linear(3, 2))
    with pytest.raises(dn.errors.ConfigurationError, match=r"extra\['x'\].*never pickle"):
        dn.save(tmp_path / "o.npz", model, extra={"x": np.array([{}], dtype=object)})
    with pytest.raises(dn.errors.ConfigurationError, match="dict"):
        dn.save(tmp_path / "o.npz", model, extra=[1, 2])
    assert not (tmp_path / "o.npz").exists()


def test_history_plot_delegates(tmp_path):
    pytest.importorskip("matplotlib")
    history = dn.History()
    for epoch, loss in enumerate([1.0, 0.5, 0.25], start=1):
        history.append(epoch, {"loss": loss, "accuracy": loss / 2, "val_loss": loss + 0.1})
    figure = history.plot(tmp_path / "h.svg", metrics=["loss"])
    assert (tmp_path / "h.svg").read_text().lstrip().startswith("<?xml")
    (ax,) = figure.axes
    assert [line.get_label() for line in ax.get_lines()] == ["train loss", "validation loss"]
    np.testing.assert_array_equal(ax.get_lines()[0].get_ydata(), [1.0, 0.5, 0.25])
