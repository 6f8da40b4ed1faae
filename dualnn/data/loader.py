"""Mini-batches of host arrays, in memory or memory-mapped from ``.npy`` files.

A :class:`DataLoader` never copies its whole dataset: every batch is gathered on its own
(``X[indices]`` with the indices sorted within the batch, so a memory-mapped file is read
in increasing offsets), cast to the requested dtype and handed out as NumPy arrays. Data
larger than RAM therefore trains from a ``.npy`` file opened with ``np.load(path,
mmap_mode="r")`` (or just its path) at the cost of one batch in memory.

This module imports NumPy only (never CuPy): moving a batch to the model's device is the
caller's business (:func:`dualnn.fit` does it with ``model.backend.asarray``).
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..errors import (
    ConfigurationError,
    DataFileError,
    DataFileNotFoundError,
    NonFiniteInputError,
    ShapeError,
)

CHUNK_BYTES = 1 << 24
"""Bytes read at a time by the whole-array checks (:func:`check_finite_rows`)."""


def open_array(data, what="X"):
    """``data`` as an indexable array without reading it.

    A ``str``/``os.PathLike`` to a ``.npy`` file is opened memory-mapped (read-only); an
    ``np.ndarray`` (memory-mapped or not) or any array-like with ``shape``, ``dtype`` and
    NumPy-style ``__getitem__`` (e.g. an h5py dataset) is returned as is; anything else
    (lists, scalars) goes through ``np.asarray``.

    Raises
    ------
    DataFileNotFoundError
        When a path names no file.
    DataFileError
        When a path does not hold a readable ``.npy`` array.
    ShapeError
        When an array-like cannot be converted (e.g. ragged lists).
    """
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise DataFileNotFoundError(f"{what}: no such file {path!r}") from None
        except (OSError, ValueError) as exc:
            raise DataFileError(f"{what}: cannot read {path!r} as a .npy array ({exc})") from None
    if isinstance(data, np.ndarray):
        return data
    if all(hasattr(data, attr) for attr in ("shape", "dtype", "__getitem__")) \
            and type(data).__module__.split(".")[0] != "cupy":
        return data
    try:
        return np.asarray(data)
    except Exception as exc:  # ragged lists, objects NumPy refuses
        raise ShapeError(f"{what}: cannot be converted to an array ({exc})") from None


def check_finite_rows(a, what="X", dtype=None):
    """Raise :class:`~dualnn.errors.NonFiniteInputError` if a float array holds NaN or inf,
    reading it in chunks.

    Works on memory-mapped arrays without loading them whole (at most ``CHUNK_BYTES`` at a
    time). Integer and boolean arrays are finite by construction and are not read. With
    ``dtype`` (e.g. the model's ``"float32"``), values are checked *after* the cast to it,
    so a float64 ``1e300`` that overflows float32 to ``inf`` is caught too. The message
    names the first bad row and column and the value found there.
    """
    kind = np.dtype(a.dtype).kind
    if kind not in "fc":
        return
    n = a.shape[0] if len(a.shape) else 1
    row_bytes = max(1, int(np.prod(a.shape[1:], dtype=np.int64)) * np.dtype(a.dtype).itemsize)
    cast_needed = dtype is not None and np.dtype(a.dtype) != np.dtype(dtype)
    # a cast copies the chunk (in RAM, unlike a memory map): smaller chunks then
    step = max(1, (CHUNK_BYTES // (8 if cast_needed else 1)) // row_bytes)
    for start in range(0, n, step):
        chunk = np.asarray(a[start:start + step])
        cast = chunk
        if cast_needed:
            with np.errstate(over="ignore", invalid="ignore"):
                cast = chunk.astype(dtype)
        finite = np.isfinite(cast).reshape(len(cast), -1)
        if not finite.all():
            row, column = (int(i[0]) for i in np.nonzero(~finite))
            value = chunk.reshape(len(chunk), -1)[row, column].item()
            got = cast.reshape(len(cast), -1)[row, column].item()
            where = f"row {start + row}" + (f", column {column}" if len(a.shape) > 1 else "")
            how = repr(value)
            if np.isfinite(value):
                how += f", which overflows to {got} as {np.dtype(dtype).name} (the model's dtype)"
            raise NonFiniteInputError(f"{what} contains NaN or infinite values (first in "
                                      f"{where}: {how})")


def batch_sizes(n, batch_size, drop_last=False, min_batch_size=1):
    """Sizes of the batches an epoch of ``n`` rows yields, in order: full batches, then
    the rest unless ``drop_last`` or it is smaller than ``min_batch_size``."""
    full, rest = divmod(n, batch_size)
    sizes = [batch_size] * full
    if rest and not drop_last and rest >= min_batch_size:
        sizes.append(rest)
    return sizes


class DataLoader:
    """Iterate over ``(X_batch, y_batch)`` pairs of host NumPy arrays.

    Parameters
    ----------
    X : array-like, shape (n, features), or path to a ``.npy`` file
        Inputs; a path (or an array from ``np.load(..., mmap_mode="r")``) is read batch by
        batch, never whole.
    y : array-like, shape (n,) or (n, k), path, or None
        Targets (integer class labels or float targets); ``None`` yields ``X`` batches only.
    batch_size : int
        Rows per batch ``K``; an epoch has ``ceil(n / K)`` batches, the last one partial.
    shuffle : bool
        Draw a new order every epoch (every ``iter()``) from ``rng``.
    drop_last : bool
        Drop a final partial batch.
    rng : numpy.random.Generator, optional
        Generator for shuffling and input noise. Default: the host generator of the
        current dualnn backend (seeded by :func:`dualnn.seed`), looked up at each epoch.
    dtype : str or None
        Cast ``X`` batches to this dtype (``"float32"``, ``"float64"``); ``None`` keeps it.
    input_noise : float
        Standard deviation of Gaussian noise added to every ``X`` batch (a regularizer;
        0 = off). Drawn from ``rng`` after the batch order.
    min_batch_size : int
        A final batch smaller than this is dropped (``fit`` passes 2 for a model with a
        :class:`~dualnn.layers.BatchNorm`, whose training forward rejects a 1-row batch).

    Notes
    -----
    With ``shuffle=True`` the indices of each batch are sorted before gathering, so the
    rows of a batch appear in file order: a batch is a set of rows, and sorted reads are
    sequential on a memory-mapped file. Losses averaged over the batch, batch norm and
    the gradient do not depend on the order of rows inside a batch.
    """

    def __init__(self, X, y=None, batch_size=32, shuffle=True, drop_last=False, rng=None,
                 *, dtype=None, input_noise=0.0, min_batch_size=1):
        self.X = open_array(X, "X")
        self.y = None if y is None else open_array(y, "y")
        if len(self.X.shape) < 1:
            raise ShapeError(f"X: expected an array of rows, got shape {tuple(self.X.shape)}")
        self.n = int(self.X.shape[0])
        if self.y is not None and (len(self.y.shape) < 1 or int(self.y.shape[0]) != self.n):
            raise ShapeError(f"X and y differ in length: X has {self.n} rows, y has shape "
                             f"{tuple(self.y.shape)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.rng = rng
        self.dtype = None if dtype is None else np.dtype(dtype)
        noise = float(input_noise)
        if not (math.isfinite(noise) and noise >= 0):
            raise ConfigurationError(f"input_noise must be a finite std >= 0, got {input_noise!r}")
        self.input_noise = noise
        if isinstance(min_batch_size, bool) or int(min_batch_size) < 1:
            raise ConfigurationError(f"min_batch_size must be >= 1, got {min_batch_size!r}")
        self.min_batch_size = int(min_batch_size)

    # ------------------------------------------------------------------ sizes
    def batch_sizes(self):
        """Sizes of the batches one epoch yields, in order."""
        return batch_sizes(self.n, self.batch_size, self.drop_last, self.min_batch_size)

    def __len__(self):
        return len(self.batch_sizes())

    @property
    def samples_per_epoch(self):
        return sum(self.batch_sizes())

    # ------------------------------------------------------------------ iteration
    def _generator(self):
        if self.rng is not None:
            return self.rng
        from ..device import get_backend  # lazy: no backend needed to build a loader
        return get_backend().host_rng

    def __iter__(self):
        rng = self._generator() if (self.shuffle or self.input_noise) else None
        order = rng.permutation(self.n) if self.shuffle else None
        start = 0
        for size in self.batch_sizes():
            stop = start + size
            if order is None:
                index = slice(start, stop)
            else:
                index = np.sort(order[start:stop])
            start = stop
            yield self._batch(index, rng)

    def _batch(self, index, rng):
        xb = np.asarray(self.X[index])
        if self.dtype is not None and xb.dtype != self.dtype:
            xb = xb.astype(self.dtype)
        if self.input_noise:
            noise = rng.standard_normal(xb.shape, dtype=xb.dtype
                                        if xb.dtype in (np.float32, np.float64) else np.float64)
            xb = xb + self.input_noise * noise
            if self.dtype is not None:
                xb = xb.astype(self.dtype, copy=False)
        if self.y is None:
            return xb
        return xb, np.asarray(self.y[index])

    def __repr__(self):
        return (f"DataLoader(n={self.n}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, batches={len(self)})")
