"""Training curves with matplotlib: :func:`plot_history`.

>>> history = dn.fit(model, loss, opt, X, y, epochs=20, validation_data=(Xv, yv))  # doctest: +SKIP
>>> plot_history(history, "curves.png")                                            # doctest: +SKIP

Needs matplotlib (``pip install "dualnn[plot]"``), imported only when called.
"""

from __future__ import annotations

import math
import os

from .errors import ConfigurationError

__all__ = ["plot_history"]

# History columns that describe the run rather than the model's quality.
_BOOKKEEPING = ("samples_per_sec", "epoch_time", "lr")


def _import_matplotlib():
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("plot_history needs matplotlib: pip install 'dualnn[plot]' "
                          "(or pip install matplotlib)") from exc
    return matplotlib, Figure


def _columns(history):
    """``(epochs, {metric: values})`` from a History or its ``to_dict()``."""
    if hasattr(history, "history") and hasattr(history, "epoch"):
        return list(history.epoch), dict(history.history)
    if isinstance(history, dict):
        columns = {k: list(v) for k, v in history.items() if k != "epoch"}
        length = max((len(v) for v in columns.values()), default=0)
        return list(history.get("epoch", range(1, length + 1))), columns
    raise ConfigurationError(f"plot_history: expected a dualnn History or its to_dict(), got "
                             f"{type(history).__name__}")


def plot_history(history, path=None, metrics=None):
    """Draw each metric per epoch, with its validation curve when there is one.

    Parameters
    ----------
    history : History or dict
        What :func:`dualnn.fit` returned, or its ``to_dict()``.
    path : str or os.PathLike, optional
        Save the figure there (format from the extension, e.g. ``.png``, ``.svg``),
        rendered with the non-interactive Agg canvas: works without a display.
    metrics : list of str, optional
        Training metrics to draw, one panel each (``val_<metric>`` joins its panel);
        default ``"loss"`` and ``"accuracy"`` when recorded, else every quality metric.

    Returns
    -------
    matplotlib.figure.Figure
        Without ``path`` the figure comes from pyplot (so notebooks and ``plt.show()``
        display it); with ``path`` it is a standalone Figure not registered with pyplot.

    Raises
    ------
    ConfigurationError
        A requested metric was not recorded, or the history is empty.
    ImportError
        matplotlib is not installed (the message says what to install).
    """
    _, Figure = _import_matplotlib()
    epochs, columns = _columns(history)
    if not epochs or not columns:
        raise ConfigurationError("plot_history: the history has no epochs to draw")
    trained = [k for k in columns if not k.startswith("val_") and k not in _BOOKKEEPING]
    if metrics is None:
        metrics = [k for k in ("loss", "accuracy") if k in columns] or trained
    else:
        metrics = [metrics] if isinstance(metrics, str) else list(metrics)
        unknown = [m for m in metrics if m not in columns]
        if unknown:
            raise ConfigurationError(f"plot_history: no metric {unknown[0]!r} in the history; "
                                     f"it recorded {sorted(columns)}")
    if not metrics:
        raise ConfigurationError(f"plot_history: nothing to draw among {sorted(columns)}")
    size = (4.5 * len(metrics), 3.4)
    if path is None:
        from matplotlib import pyplot
        figure = pyplot.figure(figsize=size)
    else:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        figure = Figure(figsize=size)
        FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        ax.plot(epochs, columns[metric], marker=".", label=f"train {metric}")
        validation = columns.get(f"val_{metric}")
        if validation is not None and not all(math.isnan(v) for v in validation):
            ax.plot(epochs, validation, marker=".", label=f"validation {metric}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(True, alpha=0.3)
        ax.legend()
    figure.tight_layout()
    if path is not None:
        figure.savefig(os.fspath(path))
    return figure
