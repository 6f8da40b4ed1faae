"""Read a data set from a file: ``.npz``, ``.npy`` pairs or ``.csv``; split and standardize.

>>> data = load_data_file("iris.csv", label="species", standardize=True)  # doctest: +SKIP
>>> dn.fit(model, loss, opt, data.X_train, data.y_train,                # doctest: +SKIP
...        validation_data=(data.X_test, data.y_test))
>>> X_new = data.standardize(X_new)   # the training mean/std, for prediction  # doctest: +SKIP

Formats
-------
``.npz``
    Arrays ``X`` (n, features) and ``y`` (n,) or (n, targets); optional ``X_test`` and
    ``y_test`` (both or neither) give the test set, and no split is made.
``.npy`` pairs
    ``.../X.npy`` with ``.../y.npy`` beside it (any common prefix: ``train_X.npy`` and
    ``train_y.npy``), named by the X file, the y file or the prefix (``data/train_`` or a
    folder holding ``X.npy``); ``X_test.npy``/``y_test.npy`` with the same prefix are used
    as the test set when both exist.
``.csv``
    Numbers separated by commas, one row per sample. The first row is a header when any of
    its cells is not a number. The label is the column named (or numbered, from 0) by
    ``label``, else the last column. Labels that are all integers become ``int64`` class
    indices, other numbers ``float64`` targets, and text labels class indices into the
    sorted ``classes``.

Every problem with a file raises a :class:`~dualnn.errors.DataFileError` naming the file
and what is wrong: :class:`~dualnn.errors.DataFileNotFoundError` when it does not exist,
``DataFileError`` when it cannot be read, :class:`~dualnn.errors.DataFileFormatError` (also
a ``ShapeError``) when its contents are wrong (a missing array, a ragged row, a non-numeric
cell with its row and column); non-finite numbers raise
:class:`~dualnn.errors.NonFiniteInputError`; bad arguments raise
:class:`~dualnn.errors.ConfigurationError`. Imports NumPy only.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass

import numpy as np

from ..errors import (
    ConfigurationError,
    DataFileError,
    DataFileFormatError,
    DataFileNotFoundError,
    ShapeError,
)
from .loader import check_finite_rows

__all__ = ["DataFile", "apply_standardization", "load_data_file"]


@dataclass
class DataFile:
    """What :func:`load_data_file` read.

    Attributes
    ----------
    X_train : ndarray (n_train, features)
    y_train : ndarray (n_train,) or (n_train, targets), or None without labels
    X_test, y_test : ndarray or None
        None when there is no test set (``test_split=0`` and none in the file).
    mean, std : ndarray (features,) float64 or None
        The training features' mean and standard deviation (constant features get std 1)
        when ``standardize=True``; ``X_train`` and ``X_test`` are already standardized
        with them. Save them with the model and pass new inputs through
        :meth:`standardize` (or :func:`apply_standardization`) before predicting.
    feature_names : list of str or None
        CSV header names of the feature columns.
    label_name : str or None
        CSV header name (or ``"column <i>"``) of the label column.
    classes : list of str or None
        For text CSV labels: the class names, ``y == i`` meaning ``classes[i]``.
    path : str
    """

    X_train: np.ndarray
    y_train: np.ndarray | None
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    feature_names: list | None = None
    label_name: str | None = None
    classes: list | None = None
    path: str = ""

    def standardize(self, X):
        """``X`` (n, features) scaled with the training mean/std (unchanged without them)."""
        return apply_standardization(X, self.mean, self.std)


def apply_standardization(X, mean, std):
    """``(X - mean) / std`` as float64 (n, features); ``X`` itself when ``mean`` is None.

    Raises
    ------
    ShapeError
        When ``X`` is not 2-D with ``len(mean)`` columns.
    """
    if mean is None:
        return X
    X = np.asarray(X, dtype=np.float64)
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != mean.shape[0]:
        raise ShapeError(f"apply_standardization: X must have shape (n, {mean.shape[0]}) like "
                         f"the training data, got {X.shape}")
    return (X - mean) / std


def load_data_file(path, label=None, test_split=0.2, standardize=False, seed=0, *,
                   with_labels=True):
    """Load a data set from ``path`` and split it into training and test sets.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.npz`` or ``.csv`` file, a ``.npy`` X or y file, or the prefix of an ``.npy``
        pair (see the module notes).
    label : str or int, optional
        CSV only: the label column's header name or 0-based index; default the last column.
    test_split : float in [0, 1)
        Fraction of the rows held out as the test set, chosen by a permutation seeded by
        ``seed``; ignored when the file has its own test arrays.
    standardize : bool
        Scale features to mean 0, std 1 using statistics of the training rows only.
    seed : int
    with_labels : bool
        False for files of features only (e.g. inputs to predict on): every CSV column is a
        feature and ``y`` is not needed.

    Returns
    -------
    DataFile

    Raises
    ------
    DataFileNotFoundError
        The file (or the partner of an ``.npy`` pair) does not exist.
    DataFileError
        The file cannot be read as its format.
    DataFileFormatError
        Its contents are wrong (message names the file, and the row and column for CSV).
    NonFiniteInputError
        A feature or float label is NaN or infinite.
    ConfigurationError
        Unknown format, ``label`` not in the header, ``test_split`` out of range.
    """
    if isinstance(test_split, bool) or not isinstance(test_split, (int, float)) \
            or not 0 <= test_split < 1:
        raise ConfigurationError(f"load_data_file: test_split must be a number in [0, 1), got "
                                 f"{test_split!r}")
    path = os.fspath(path)
    lower = path.lower()
    if label is not None and not lower.endswith(".csv"):
        raise ConfigurationError(f"load_data_file: label= names a CSV column; {path!r} is not "
                                 f"a .csv file")
    info = {}
    if lower.endswith(".csv"):
        X, y, info = _read_csv(path, label, with_labels)
        X_test = y_test = None
    elif lower.endswith(".npz"):
        X, y, X_test, y_test = _read_npz(path, with_labels)
    else:
        X, y, X_test, y_test = _read_npy_pair(path, with_labels)
    _check_pair(path, X, y, "X", "y")
    if X_test is not None:
        _check_pair(path, X_test, y_test, "X_test", "y_test")
        if X_test.shape[1] != X.shape[1]:
            raise DataFileFormatError(f"{path}: X has {X.shape[1]} features but X_test has "
                                      f"{X_test.shape[1]}")
    elif test_split > 0:
        X, y, X_test, y_test = _split(path, X, y, test_split, seed)
    mean = std = None
    if standardize:
        mean = X.mean(axis=0, dtype=np.float64)
        std = X.std(axis=0, dtype=np.float64)
        std[std == 0] = 1.0  # a constant feature stays 0 after centering instead of NaN
        X = apply_standardization(X, mean, std)
        if X_test is not None:
            X_test = apply_standardization(X_test, mean, std)
    return DataFile(X, y, X_test, y_test, mean, std, path=path, **info)


# ---------------------------------------------------------------------------------- checks

def _check_pair(path, X, y, x_name, y_name):
    if X.ndim != 2:
        raise DataFileFormatError(f"{path}: {x_name} must be 2-D (samples, features), got shape "
                                  f"{X.shape}")
    if X.dtype.kind not in "fiub":
        raise DataFileFormatError(f"{path}: {x_name} must hold numbers, got dtype {X.dtype}")
    if X.shape[0] == 0:
        raise DataFileFormatError(f"{path}: {x_name} has no rows")
    check_finite_rows(X, f"{path}: {x_name}")
    if y is None:
        return
    if y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
        raise DataFileFormatError(f"{path}: {y_name} must have one row per row of {x_name} "
                                  f"({X.shape[0]}), got shape {y.shape}")
    if y.dtype.kind not in "fiub":
        raise DataFileFormatError(f"{path}: {y_name} must hold numbers, got dtype {y.dtype}")
    if y.dtype.kind == "f":
        check_finite_rows(y, f"{path}: {y_name}")


def _split(path, X, y, test_split, seed):
    n = X.shape[0]
    n_test = round(n * test_split)
    if n_test == 0 or n_test == n:
        raise ShapeError(f"{path}: {n} rows are too few for test_split={test_split} (it would "
                         f"leave {n_test} test and {n - n_test} training rows)")
    order = np.random.default_rng(seed).permutation(n)
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return (X[train], None if y is None else y[train], X[test],
            None if y is None else y[test])


# ---------------------------------------------------------------------------------- npz / npy

def _load_npy(path):
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataFileNotFoundError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise DataFileError(f"{path}: cannot read as a .npy array ({exc})") from None


def _read_npz(path, with_labels):
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataFileNotFoundError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise DataFileError(f"{path}: cannot read as a .npz archive ({exc})") from None
    with archive:
        names = set(archive.files)
        needed = ["X", "y"] if with_labels else ["X"]
        missing = [name for name in needed if name not in names]
        if missing:
            raise DataFileFormatError(f"{path}: missing array {' and '.join(missing)} (the "
                                      f"archive holds {sorted(names) or 'nothing'}; expected "
                                      f"X, y and optionally X_test, y_test)")
        try:
            X = archive["X"]
            y = archive["y"] if with_labels else None
            X_test = y_test = None
            test_names = ["X_test", "y_test"] if with_labels else ["X_test"]
            present = [name for name in test_names if name in names]
            if present and len(present) != len(test_names):
                lacking = sorted(set(test_names) - set(present))
                raise DataFileFormatError(f"{path}: has {present[0]} but not {lacking[0]}; give "
                                          f"both test arrays or neither")
            if present:
                X_test = archive["X_test"]
                y_test = archive["y_test"] if with_labels else None
        except DataFileFormatError:
            raise
        except ValueError as exc:  # e.g. an object array refused without pickle
            raise DataFileError(f"{path}: cannot read its arrays ({exc})") from None
    return X, y, X_test, y_test


def _npy_prefix(path):
    """``(prefix, x_file)``: the file name before ``X.npy``/``y.npy``."""
    if os.path.isdir(path):
        return os.path.join(path, ""), None
    base = os.path.basename(path)
    for name in ("X.npy", "y.npy"):
        if base.endswith(name):
            return path[:-len(name)], path
    if base.lower().endswith(".npy"):
        raise ConfigurationError(f"load_data_file: {path!r}: a .npy file must be named "
                                 f"...X.npy or ...y.npy, with its partner beside it")
    if os.path.exists(path + "X.npy"):
        return path, None
    if os.path.exists(path + "_X.npy"):
        return path + "_", None
    raise ConfigurationError(
        f"load_data_file: {path!r} is not a .csv, .npz or .npy file, nor the prefix of an "
        f"X.npy/y.npy pair ({path + 'X.npy'!r} does not exist)")


def _read_npy_pair(path, with_labels):
    prefix, _ = _npy_prefix(path)
    x_file, y_file = prefix + "X.npy", prefix + "y.npy"
    if not os.path.exists(x_file):
        raise DataFileNotFoundError(f"{x_file}: no such file (the X array of the .npy pair "
                                    f"{path!r})")
    if with_labels and not os.path.exists(y_file):
        raise DataFileNotFoundError(f"{y_file}: no such file (the y array of the .npy pair "
                                    f"{path!r}; expected beside {x_file})")
    X = _load_npy(x_file)
    y = _load_npy(y_file) if with_labels else None
    X_test = y_test = None
    xt, yt = prefix + "X_test.npy", prefix + "y_test.npy"
    if os.path.exists(xt) and (os.path.exists(yt) or not with_labels):
        X_test = _load_npy(xt)
        y_test = _load_npy(yt) if with_labels else None
    return X, y, X_test, y_test


# ---------------------------------------------------------------------------------- csv

def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path, label, with_labels):
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [(number, row) for number, row in enumerate(csv.reader(handle), start=1)
                    if any(cell.strip() for cell in row)]
    except FileNotFoundError:
        raise DataFileNotFoundError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataFileError(f"{path}: cannot read as CSV ({exc})") from None
    if not rows:
        raise DataFileFormatError(f"{path}: the CSV file is empty")
    header = None
    reference = rows[0][0]  # the row that fixes the number of columns
    if not all(_is_number(cell) for cell in rows[0][1]):
        header = [cell.strip() for cell in rows[0][1]]
        rows = rows[1:]
        if not rows:
            raise DataFileFormatError(f"{path}: the CSV file has a header but no data rows")
    width = len(header) if header is not None else len(rows[0][1])
    for number, row in rows:
        if len(row) != width:
            raise DataFileFormatError(f"{path}: ragged CSV row {number}: {len(row)} columns, "
                                      f"expected {width} (as in row {reference})")
    names = header or [f"column {i}" for i in range(width)]
    target = _label_column(path, label, header, width) if with_labels else None
    if target is not None and width < 2:
        raise DataFileFormatError(f"{path}: needs at least one feature column besides the label "
                                  f"column, the file has {width} column")
    features = [i for i in range(width) if i != target]
    X = np.empty((len(rows), len(features)), dtype=np.float64)
    for r, (number, row) in enumerate(rows):
        for c, column in enumerate(features):
            cell = row[column].strip()
            try:
                X[r, c] = float(cell)
            except ValueError:
                raise DataFileFormatError(f"{path}: non-numeric value {cell!r} at row {number} "
                                          f"column {column + 1} ({names[column]})") from None
            if not math.isfinite(X[r, c]):
                raise DataFileFormatError(f"{path}: non-finite value {cell!r} at row {number} "
                                          f"column {column + 1} ({names[column]})")
    info = {"feature_names": [names[i] for i in features] if header else None}
    if target is None:
        return X, None, info
    y, classes = _csv_labels(path, [(number, row[target].strip()) for number, row in rows],
                             target, names[target])
    info.update(label_name=names[target], classes=classes)
    return X, y, info


def _label_column(path, label, header, width):
    if label is None:
        return width - 1
    if isinstance(label, str):
        if header is None:
            raise ConfigurationError(f"load_data_file: label={label!r} names a column but "
                                     f"{path} has no header row")
        if label not in header:
            raise ConfigurationError(f"load_data_file: {path} has no column {label!r}; its "
                                     f"columns are {header}")
        return header.index(label)
    if isinstance(label, bool) or not isinstance(label, int) or not -width <= label < width:
        raise ConfigurationError(f"load_data_file: label must be a column name or an index "
                                 f"in [0, {width}) for {path}, got {label!r}")
    return label % width


def _csv_labels(path, cells, column, name):
    """Labels as int64 class indices, float64 targets, or indices into sorted text classes."""
    empty = [number for number, cell in cells if cell == ""]
    if empty:
        raise DataFileFormatError(f"{path}: empty label at row {empty[0]} column {column + 1} "
                                  f"({name})")
    if all(_is_number(cell) for _, cell in cells):
        values = np.array([float(cell) for _, cell in cells])
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            number, cell = cells[bad[0]]
            raise DataFileFormatError(f"{path}: non-finite label {cell!r} at row {number} column "
                                      f"{column + 1} ({name})")
        if np.all(values == np.round(values)):
            return values.astype(np.int64), None
        return values, None
    numeric = [(number, cell) for number, cell in cells if _is_number(cell)]
    if numeric and len(numeric) < len(cells):
        number, cell = numeric[0]
        raise DataFileFormatError(f"{path}: the label column {name} mixes text and numbers (number "
                                  f"{cell!r} at row {number})")
    classes = sorted({cell for _, cell in cells})
    index = {value: i for i, value in enumerate(classes)}
    return np.array([index[cell] for _, cell in cells], dtype=np.int64), classes
