"""Small standard datasets for examples, tests and benchmarks.

``dn.datasets.load(name, ...)`` returns a :class:`Dataset` with ``X_train``, ``y_train``,
``X_test``, ``y_test`` (float32 features standardized with statistics of the training set
only, int64 labels), ``n_classes`` and ``name``.

================================  ==================================================================
``"digits"``                      scikit-learn's bundled 8x8 handwritten digits (1,797 images, 64
                                  features, 10 classes); fixed stratified 80/20 split (seed 0).
                                  Needs the ``datasets`` extra: ``pip install 'dualnn[datasets]'``.
``"mnist"``, ``"fashion-mnist"``  MNIST (60,000 + 10,000 images of 28x28 = 784 features) read from
                                  the four standard IDX files (optionally ``.gz``) or one ``.npz``
                                  in a directory you name; dualnn never downloads.
``"synthetic"``                   Seeded Gaussian-cluster classification data of any size.
================================  ==================================================================

This module imports NumPy only, never CuPy.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass

import numpy as np

from .errors import ConfigurationError, DataFileError, ShapeError

__all__ = ["MNIST_FILES", "NAMES", "Dataset", "Standardizer", "load"]

NAMES = ("digits", "mnist", "fashion-mnist", "synthetic")

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
"""The standard IDX file names (each may also be present with a ``.gz`` suffix)."""

_SOURCES = {
    "mnist": "https://yann.lecun.com/exdb/mnist/ (or a mirror such as "
             "https://ossci-datasets.s3.amazonaws.com/mnist/)",
    "fashion-mnist": "https://github.com/zalandoresearch/fashion-mnist "
                     "(data/fashion/*.gz in that repository)",
}

_EXPECTED_COUNTS = {"train": 60000, "test": 10000}


class DatasetError(DataFileError):
    """A dataset's files are missing, malformed, or a needed package is not installed."""


@dataclass
class Dataset:
    """A train/test split.

    Attributes
    ----------
    X_train, X_test : ndarray, shape (n, features), float32
    y_train, y_test : ndarray, shape (n,), int64 class labels
    n_classes : int
    name : str
    standardizer : Standardizer or None
        The transform fitted on ``X_train`` (apply it to new data), if one was applied.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    name: str
    standardizer: Standardizer | None = None

    @property
    def n_features(self):
        return int(self.X_train.shape[1])

    def __repr__(self):
        return (f"Dataset(name={self.name!r}, train={self.X_train.shape}, "
                f"test={self.X_test.shape}, n_classes={self.n_classes})")


class Standardizer:
    """Per-feature ``(x - mean) / std``, fitted on training data only.

    A feature with zero variance in the training data (e.g. an always-blank pixel) gets
    ``std = 1``: it becomes ``x - mean`` (zero on the training data) instead of a division
    by zero.
    """

    def __init__(self):
        self.mean_ = None
        self.scale_ = None

    def fit(self, X):
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ShapeError(f"Standardizer.fit: expected a 2-D array, got shape {X.shape}")
        self.mean_ = X.mean(axis=0)
        std = X.std(axis=0)
        self.scale_ = np.where(std > 0, std, 1.0)
        return self

    def transform(self, X, dtype="float32"):
        if self.mean_ is None:
            raise ConfigurationError("Standardizer.transform called before fit")
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.mean_.shape[0]:
            raise ShapeError(f"Standardizer.transform: expected shape (n, {self.mean_.shape[0]}),"
                             f" got {X.shape}")
        return ((X - self.mean_) / self.scale_).astype(dtype)

    def fit_transform(self, X, dtype="float32"):
        return self.fit(X).transform(X, dtype)


def load(name, data_dir=None, *, standardize=True, seed=0, n_samples=10000, n_features=64,
         n_classes=10, test_fraction=0.2, checksums=None):
    """Load a dataset by name; see the module docstring for the names.

    Parameters
    ----------
    name : {"digits", "mnist", "fashion-mnist", "synthetic"}
    data_dir : str or path, optional
        Where the MNIST / Fashion-MNIST files are: the directory itself or its
        ``<name>`` subdirectory. Default: ``$DUALNN_DATA_DIR``, else
        ``~/.cache/dualnn/<name>``.
    standardize : bool
        Standardize features with a :class:`Standardizer` fitted on the training split
        (default). Otherwise MNIST pixels are scaled to [0, 1] and digits to [0, 1].
    seed : int
        Split seed (digits) and generator seed (synthetic).
    n_samples, n_features, n_classes : int
        Size of the synthetic dataset (train + test).
    test_fraction : float
        Test share of the digits and synthetic splits.
    checksums : dict, optional
        ``{file name: SHA-256 hex}`` to verify MNIST files against. dualnn ships no
        hashes (it does not vouch for values it cannot check here); without this, files
        are verified by structure: the IDX magic numbers, the image and label counts
        (60,000 / 10,000), the 28x28 size and labels in 0..9.

    Raises
    ------
    DatasetError
        Unknown files missing (the message lists them, where to get them, where to put
        them), malformed files, a checksum mismatch, scikit-learn not installed.
    ConfigurationError
        Unknown name or bad sizes.
    """
    key = str(name).lower().replace("_", "-")
    if key == "digits":
        X, y = _digits_arrays()
        X_train, y_train, X_test, y_test = _stratified_split(X, y, test_fraction, seed)
        n_classes, scale = 10, 16.0
    elif key in ("mnist", "fashion-mnist"):
        X_train, y_train, X_test, y_test = _mnist_arrays(key, data_dir, checksums)
        n_classes, scale = 10, 255.0
    elif key == "synthetic":
        X_train, y_train, X_test, y_test = _synthetic_arrays(n_samples, n_features, n_classes,
                                                             test_fraction, seed)
        scale = None
    else:
        raise ConfigurationError(f"unknown dataset {name!r}; expected one of {list(NAMES)}")
    standardizer = None
    if standardize:
        standardizer = Standardizer().fit(X_train)
        X_train = standardizer.transform(X_train)
        X_test = standardizer.transform(X_test)
    else:
        X_train = _as_float32(X_train, scale)
        X_test = _as_float32(X_test, scale)
    return Dataset(X_train, np.asarray(y_train, np.int64), X_test, np.asarray(y_test, np.int64),
                   int(n_classes), key, standardizer)


def _as_float32(X, scale):
    X = np.asarray(X, dtype=np.float32)
    return X / np.float32(scale) if scale else X


# ---------------------------------------------------------------------------------- digits

def _digits_arrays():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError(
            "the 'digits' dataset needs scikit-learn, which is not installed; install the "
            "datasets extra: pip install 'dualnn[datasets]'") from None
    bunch = load_digits()
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)


def _stratified_split(X, y, test_fraction, seed):
    if not 0 < test_fraction < 1:
        raise ConfigurationError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        members = members[rng.permutation(len(members))]
        test.append(members[:int(round(len(members) * test_fraction))])
    test = np.sort(np.concatenate(test))
    mask = np.zeros(len(y), dtype=bool)
    mask[test] = True
    train = np.flatnonzero(~mask)
    train = train[rng.permutation(len(train))]
    return X[train], y[train], X[test], y[test]


# ---------------------------------------------------------------------------------- synthetic

def _synthetic_arrays(n_samples, n_features, n_classes, test_fraction, seed):
    for label, value, low in (("n_samples", n_samples, 2), ("n_features", n_features, 1),
                              ("n_classes", n_classes, 2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigurationError(f"synthetic: {label} must be an int >= {low}, got {value!r}")
    if not 0 < test_fraction < 1:
        raise ConfigurationError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, size=(n_classes, n_features)) * 2.0 / np.sqrt(
        max(1, n_features) / 8)
    y = rng.integers(0, n_classes, size=n_samples)
    X = (centers[y] + rng.standard_normal((n_samples, n_features))).astype(np.float32)
    n_test = max(1, int(round(n_samples * test_fraction)))
    return X[n_test:], y[n_test:], X[:n_test], y[:n_test]


# ---------------------------------------------------------------------------------- MNIST

def _default_dir(name):
    base = os.environ.get("DUALNN_DATA_DIR") or os.path.join("~", ".cache", "dualnn")
    return os.path.join(os.path.expanduser(base), name)


def _find(directory, filename):
    for candidate in (filename, filename + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _mnist_arrays(name, data_dir, checksums):
    if data_dir is None:
        directories = [_default_dir(name)]
    else:
        data_dir = os.path.expanduser(os.fspath(data_dir))
        directories = [data_dir, os.path.join(data_dir, name)]
    for directory in directories:
        npz = _find_npz(directory, name)
        if npz is not None:
            return _read_npz(npz, checksums)
        paths = {key: _find(directory, filename) for key, filename in MNIST_FILES.items()}
        if all(paths.values()):
            break
    else:
        directory = directories[0]
        paths = {key: _find(directory, filename) for key, filename in MNIST_FILES.items()}
    missing = [MNIST_FILES[key] + "[.gz]" for key, path in paths.items() if path is None]
    if missing:
        where = directory if os.path.isdir(directory) else f"{directory} (does not exist)"
        raise DatasetError(
            f"{name}: missing file(s) {', '.join(missing)} in {where}. Download the four "
            f"standard IDX files from {_SOURCES[name]} and put them (gzipped or not) in that "
            f"directory, or pass another one (data_dir=..., dualnn train --data-dir DIR); a "
            f"{name}.npz with x_train, y_train, x_test, y_test also works")
    arrays = {}
    for key, path in paths.items():
        _verify_checksum(path, checksums)
        arrays[key] = _read_idx(path)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        _check_mnist_split(name, split, images, labels, paths[f"{split}_images"])
    return (arrays["train_images"].reshape(-1, 784), arrays["train_labels"],
            arrays["test_images"].reshape(-1, 784), arrays["test_labels"])


def _find_npz(directory, name):
    for candidate in (f"{name}.npz", f"{name.replace('-', '_')}.npz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _read_npz(path, checksums):
    _verify_checksum(path, checksums)
    try:
        with np.load(path, allow_pickle=False) as npz:
            parts = [np.asarray(npz[key]) for key in ("x_train", "y_train", "x_test", "y_test")]
    except KeyError as exc:
        raise DatasetError(f"{path}: expected arrays x_train, y_train, x_test, y_test ({exc})") \
            from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({exc})") from None
    x_train, y_train, x_test, y_test = parts
    for label, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.ndim < 2 or len(x) != len(y) or y.ndim != 1:
            raise DatasetError(f"{path}: {label} split has images {x.shape} and labels {y.shape}")
    return (x_train.reshape(len(x_train), -1), y_train, x_test.reshape(len(x_test), -1), y_test)


def _verify_checksum(path, checksums):
    if not checksums:
        return
    base = os.path.basename(path)
    expected = checksums.get(base) or checksums.get(base.removesuffix(".gz"))
    if expected is None:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected.lower():
        raise DatasetError(f"{path}: SHA-256 {digest.hexdigest()} does not match the expected "
                           f"{expected}; the file is corrupt or not the standard one")


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_idx(path):
    """Read an IDX file: magic ``00 00 <type> <ndim>``, ``ndim`` big-endian uint32 sizes."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(f"{path}: IDX header says shape {shape} ({expected} bytes of data), "
                           f"the file holds {len(data) - header}; it is truncated or corrupt")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _check_mnist_split(name, split, images, labels, path):
    count = _EXPECTED_COUNTS[split]
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.ndim != 1:
        raise DatasetError(f"{name}: {split} images must be (n, 28, 28) with (n,) labels, got "
                           f"{images.shape} and {labels.shape} ({os.path.dirname(path)})")
    if len(images) != len(labels):
        raise DatasetError(f"{name}: {split} has {len(images)} images but {len(labels)} labels")
    if len(images) != count:
        raise DatasetError(f"{name}: the standard {split} split has {count} images, "
                           f"{os.path.dirname(path)} holds {len(images)}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{name}: {split} labels outside 0..9")
