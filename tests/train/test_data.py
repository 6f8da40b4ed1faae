"""DataLoader (in memory and memory-mapped), datasets, Standardizer."""

from __future__ import annotations

import ast
import gzip
import pathlib
import sys
import tracemalloc

import numpy as np
import pytest

import dualnn as dn
from dualnn.datasets import DatasetError, Standardizer
from dualnn.errors import (
    ConfigurationError,
    DataFileError,
    DataFileNotFoundError,
    DualnnError,
    ShapeError,
)

# ---------------------------------------------------------------------------------- DataLoader

def test_batches_cover_every_row_once_last_partial():
    X = np.arange(23, dtype=np.float64).reshape(23, 1)
    y = np.arange(23)
    loader = dn.data.DataLoader(X, y, batch_size=5, shuffle=True,
                                rng=np.random.default_rng(0))
    assert len(loader) == 5 and loader.batch_sizes() == [5, 5, 5, 5, 3]
    first = [yb for _, yb in loader]
    seen = np.concatenate(first)
    assert sorted(seen.tolist()) == list(range(23))
    for xb, yb in loader:
        assert np.array_equal(xb[:, 0], yb)            # rows stay paired
        assert np.all(np.diff(yb) > 0)                  # indices sorted within a batch
    second = np.concatenate([yb for _, yb in loader])
    assert not np.array_equal(seen, second)             # reshuffled every epoch
    ordered = dn.data.DataLoader(X, y, batch_size=5, shuffle=False)
    assert np.array_equal(np.concatenate([yb for _, yb in ordered]), y)
    assert dn.data.DataLoader(X, y, 5, drop_last=True).batch_sizes() == [5] * 4
    assert dn.data.DataLoader(X[:21], y[:21], 5, min_batch_size=2).batch_sizes() == [5] * 4
    assert dn.data.DataLoader(X[:22], y[:22], 5, min_batch_size=2).batch_sizes() == [5] * 4 + [2]


def test_shuffle_is_reproducible_with_seed_and_dtype_and_noise():
    X = np.random.default_rng(1).standard_normal((50, 3))

    def epoch(seed, noise=0.0):
        loader = dn.data.DataLoader(X, None, 8, rng=np.random.default_rng(seed),
                                    dtype="float32", input_noise=noise)
        return np.concatenate(list(loader))

    a = epoch(3)
    assert a.dtype == np.float32 and np.array_equal(a, epoch(3))
    assert not np.array_equal(a, epoch(4))
    noisy = epoch(3, noise=0.5)
    assert noisy.dtype == np.float32 and 0.3 < np.std(noisy - a) < 0.7
    # default generator: the current backend's, seeded by dn.seed
    dn.seed(11)
    b = np.concatenate(list(dn.data.DataLoader(X, None, 8)))
    dn.seed(11)
    assert np.array_equal(b, np.concatenate(list(dn.data.DataLoader(X, None, 8))))


def test_loader_argument_errors():
    X = np.zeros((10, 2))
    with pytest.raises(ShapeError, match="differ in length"):
        dn.data.DataLoader(X, np.zeros(9))
    with pytest.raises(ConfigurationError, match="batch_size"):
        dn.data.DataLoader(X, None, batch_size=0)
    with pytest.raises(ConfigurationError, match="input_noise"):
        dn.data.DataLoader(X, None, input_noise=-1)
    with pytest.raises(DataFileNotFoundError, match="no such file") as info:
        dn.data.DataLoader("/nonexistent/x.npy")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, DualnnError)


def test_unreadable_data_file_is_a_data_file_error(tmp_path):
    path = tmp_path / "x.npy"
    path.write_bytes(b"not an npy file")
    with pytest.raises(DataFileError, match="cannot read") as info:
        dn.data.DataLoader(path)
    assert isinstance(info.value, OSError) and not isinstance(info.value, FileNotFoundError)


def test_dataset_errors_are_data_file_errors():
    assert issubclass(DatasetError, DataFileError) and issubclass(DatasetError, OSError)


class CountingArray:
    """Array-like over a memory map that records how many rows each access reads."""

    def __init__(self, array):
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.reads = []

    def __getitem__(self, index):
        out = self.array[index]
        self.reads.append(len(out))
        return out


def test_memory_mapped_data_trains_batch_by_batch(tmp_path):
    # 24,000 x 200 float64 = 38 MB on disk; training must never hold it (or a float32 copy,
    # 19 MB, or a boolean isfinite mask, 4.8 MB) in memory.
    n, features = 24_000, 200
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, n)
    X_path, y_path = tmp_path / "X.npy", tmp_path / "y.npy"
    mm = np.lib.format.open_memmap(X_path, mode="w+", dtype=np.float64, shape=(n, features))
    for start in range(0, n, 4000):
        stop = start + 4000
        mm[start:stop] = rng.standard_normal((stop - start, features)) + labels[start:stop, None]
    mm.flush()
    del mm
    np.save(y_path, labels)

    X = np.load(X_path, mmap_mode="r")
    assert isinstance(X, np.memmap)
    dn.seed(0)
    model = dn.Sequential(dn.layers.Linear(features, 16), dn.layers.ReLU(),
                          dn.layers.Linear(16, 4))
    opt = dn.optim.Adam(model.parameters(), lr=1e-2)
    loss = dn.losses.SoftmaxCrossEntropy()
    # warm up kernels and caches with the same kinds of arrays (read-only labels compile
    # their own kernel signature)
    dn.fit(model, loss, opt, X[:512], np.load(y_path, mmap_mode="r")[:512], epochs=1,
           batch_size=256, progress=False)
    dn.evaluate(model, loss, str(X_path), labels, batch_size=1024)
    tracemalloc.start()
    try:
        history = dn.fit(model, loss, opt, X, np.load(y_path, mmap_mode="r"), epochs=1,
                         batch_size=256, progress=False)
        scores = dn.evaluate(model, loss, str(X_path), labels, batch_size=1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000, f"peak traced memory {peak / 1e6:.1f} MB"
    assert history["accuracy"][0] > 0.5 and scores["accuracy"] > 0.5

    # and the loader itself only ever gathers one batch of rows at a time
    counting = CountingArray(X)
    loader = dn.data.DataLoader(counting, labels, batch_size=256, shuffle=True,
                                rng=np.random.default_rng(0), dtype="float32")
    total = sum(len(xb) for xb, _ in loader)
    assert total == n and max(counting.reads) == 256 and len(counting.reads) == len(loader)


def test_data_modules_never_import_cupy():
    root = pathlib.Path(dn.__file__).parent
    for path in [root / "datasets.py", *sorted((root / "data").glob("*.py"))]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(name.split(".")[0] == "cupy" for name in names), path


# ---------------------------------------------------------------------------------- datasets

def test_digits_split_is_fixed_and_standardized():
    a = dn.datasets.load("digits")
    b = dn.datasets.load("digits")
    assert (a.name, a.n_classes, a.n_features) == ("digits", 10, 64)
    assert a.X_train.shape == (1438, 64) and a.X_test.shape == (359, 64)
    assert a.X_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert np.array_equal(a.X_train, b.X_train) and np.array_equal(a.y_test, b.y_test)
    assert np.allclose(a.X_train.mean(0), 0, atol=1e-5)
    assert np.all(np.isfinite(a.X_test))
    assert sorted(np.unique(a.y_test).tolist()) == list(range(10))   # stratified
    raw = dn.datasets.load("digits", standardize=False)
    assert raw.X_train.min() >= 0 and raw.X_train.max() <= 1


def test_digits_without_scikit_learn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DatasetError, match=r"pip install 'dualnn\[datasets\]'"):
        dn.datasets.load("digits")


def test_synthetic_is_seeded_and_sized():
    a = dn.datasets.load("synthetic", n_samples=1000, n_features=12, n_classes=3, seed=4)
    b = dn.datasets.load("synthetic", n_samples=1000, n_features=12, n_classes=3, seed=4)
    c = dn.datasets.load("synthetic", n_samples=1000, n_features=12, n_classes=3, seed=5)
    assert len(a.X_train) + len(a.X_test) == 1000 and a.n_features == 12 and a.n_classes == 3
    assert np.array_equal(a.X_train, b.X_train) and not np.array_equal(a.X_train, c.X_train)
    with pytest.raises(ConfigurationError):
        dn.datasets.load("synthetic", n_classes=1)
    with pytest.raises(ConfigurationError, match="unknown dataset"):
        dn.datasets.load("cifar")


def test_standardizer_handles_zero_variance():
    X = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    s = Standardizer().fit(X)
    out = s.transform(X)
    assert np.all(np.isfinite(out)) and np.allclose(out[:, 1], 0)
    assert np.allclose(out[:, 0].std(), 1)
    assert np.allclose(s.transform(np.array([[3.0, 6.0]])), [[0.0, 1.0]])
    with pytest.raises(ShapeError):
        s.transform(np.zeros((2, 3)))


def test_mnist_missing_files_error_lists_files_source_and_place(tmp_path):
    with pytest.raises(DatasetError) as info:
        dn.datasets.load("mnist", tmp_path)
    message = str(info.value)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert name in message
    assert str(tmp_path) in message and "http" in message
    with pytest.raises(DatasetError, match="fashion-mnist"):
        dn.datasets.load("fashion-mnist", tmp_path)


def _idx(array, magic_type=0x08):
    header = bytes([0, 0, magic_type, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_idx_reader_checks_structure(tmp_path):
    from dualnn.datasets import _read_idx

    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    good = tmp_path / "imgs.gz"
    good.write_bytes(gzip.compress(_idx(images)))
    assert np.array_equal(_read_idx(str(good)), images)
    bad_magic = tmp_path / "bad"
    bad_magic.write_bytes(b"\x01\x02" + _idx(images)[2:])
    with pytest.raises(DatasetError, match="magic"):
        _read_idx(str(bad_magic))
    truncated = tmp_path / "short"
    truncated.write_bytes(_idx(images)[:-10])
    with pytest.raises(DatasetError, match="truncated"):
        _read_idx(str(truncated))


def test_mnist_from_npz_and_checksum(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mnist.npz", x_train=rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
             y_train=rng.integers(0, 10, 40), x_test=rng.integers(0, 256, (10, 28, 28),
                                                                 dtype=np.uint8),
             y_test=rng.integers(0, 10, 10))
    ds = dn.datasets.load("mnist", tmp_path)
    assert ds.X_train.shape == (40, 784) and ds.X_test.shape == (10, 784)
    with pytest.raises(DatasetError, match="SHA-256"):
        dn.datasets.load("mnist", tmp_path, checksums={"mnist.npz": "0" * 64})
