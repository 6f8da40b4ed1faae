"""dualnn.plotting.plot_history: writes an image of the training curves."""

import sys

import numpy as np
import pytest

import dualnn as dn
from dualnn.errors import ConfigurationError
from dualnn.plotting import plot_history

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def history():
    dn.seed(0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    model = dn.Sequential(dn.layers.Linear(4, 8), dn.layers.ReLU(), dn.layers.Linear(8, 2))
    return dn.fit(model, dn.losses.SoftmaxCrossEntropy(), dn.optim.Adam(model.parameters()),
                  X[:48], y[:48], epochs=3, batch_size=16, progress=False,
                  validation_data=(X[48:], y[48:]))


def _lines(figure):
    return {ax.get_title(): [line.get_label() for line in ax.get_lines()] for ax in figure.axes}


def test_writes_png_with_train_and_validation_curves(history, tmp_path):
    path = tmp_path / "curves.png"
    figure = plot_history(history, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _lines(figure) == {"loss": ["train loss", "validation loss"],
                              "accuracy": ["train accuracy", "validation accuracy"]}
    line = figure.axes[0].get_lines()[1]
    np.testing.assert_allclose(line.get_ydata(), history["val_loss"])
    np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3])


def test_chosen_metrics_and_dict_input(history, tmp_path):
    figure = plot_history(history.to_dict(), tmp_path / "lr.svg", metrics=["lr"])
    assert _lines(figure) == {"lr": ["train lr"]}
    assert (tmp_path / "lr.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(ConfigurationError, match="no metric 'f1'"):
        plot_history(history, metrics=["f1"])


def test_without_path_returns_pyplot_figure(history):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot
    figure = plot_history(history)
    assert pyplot.fignum_exists(figure.number)
    pyplot.close(figure)


def test_missing_matplotlib_says_what_to_install(history, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'dualnn\[plot\]'"):
        plot_history(history, "x.png")
