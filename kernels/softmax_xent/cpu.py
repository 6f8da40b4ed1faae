"""Softmax cross-entropy as a Numba kernel on NumPy arrays (twin of ``reference.py``).

One pass per row: stable log-sum-exp (in float64), the row's loss, ``dlogits``. The same
calling convention as the CUDA launcher: the caller allocates ``loss`` (one element),
``dlogits`` and the per-row scratch (:func:`softmax_cross_entropy_scratch`).
"""

from __future__ import annotations

import math

import numpy as np

from .._numba import KernelSet, check, prange


def _k_softmax_cross_entropy(logits, labels, dlogits, row_loss):
    n, k = logits.shape
    nf = logits.dtype.type(n)
    zero = logits.dtype.type(0)
    one = logits.dtype.type(1)
    for i in prange(n):
        z = logits[i]
        g = dlogits[i]
        m = z[0]
        for j in range(1, k):
            if z[j] > m:
                m = z[j]
        s = 0.0
        for j in range(k):
            e = math.exp(z[j] - m)
            g[j] = e
            s += e
        inv = logits.dtype.type(1.0 / s)
        label = labels[i]
        for j in range(k):
            g[j] = (g[j] * inv - (one if j == label else zero)) / nf
        if 0 <= label < k:
            row_loss[i] = math.log(s) - (np.float64(z[label]) - np.float64(m))
        else:  # never read outside the row; the caller raises
            row_loss[i] = np.nan


_KERNELS = KernelSet(globals(), kernels=("softmax_cross_entropy",))


def softmax_cross_entropy_scratch(n, dtype):
    """``(shape, dtype name)`` of the per-row loss scratch for ``n`` rows: float64 here."""
    return (n,), "float64"


def softmax_cross_entropy(logits, labels, *, loss, dlogits, row_loss):
    """Mean softmax cross-entropy into ``loss``; ``dlogits`` receives its gradient.

    Parameters
    ----------
    logits : ndarray, shape (n, k), n >= 1, k >= 1
    labels : integer ndarray, shape (n,), values in [0, k)
    loss : ndarray, one element (e.g. shape ``()`` or ``(1,)``), dtype of ``logits``
        Receives ``-mean_i log softmax(logits)_{i, labels_i}``.
    dlogits : ndarray, shape (n, k)
        Receives ``(softmax(logits) - onehot(labels)) / n``; may be ``logits``.
    row_loss : ndarray, float64, shape (n,)
        Scratch: each row's loss (see :func:`softmax_cross_entropy_scratch`).

    Returns
    -------
    loss, dlogits : ndarray

    Raises
    ------
    ValueError
        Bad shapes or dtypes, or a label outside ``[0, k)`` (checked before any row is
        read).
    """
    if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 1:
        raise ValueError(f"logits must be 2-D and non-empty, got shape {logits.shape}")
    n, k = logits.shape
    check(logits, dlogits, shapes=(logits.shape, logits.shape), outputs=(dlogits,))
    if not (isinstance(loss, np.ndarray) and loss.size == 1 and loss.dtype == logits.dtype
            and loss.flags.writeable):
        raise ValueError(f"loss must be a writable one-element {logits.dtype} array, got "
                         f"{getattr(loss, 'dtype', type(loss).__name__)} "
                         f"{getattr(loss, 'shape', '')}")
    if not (isinstance(row_loss, np.ndarray) and row_loss.shape == (n,)
            and row_loss.dtype == np.float64 and row_loss.flags.c_contiguous
            and row_loss.flags.writeable):
        raise ValueError(f"row_loss must be a writable contiguous float64 array of shape "
                         f"({n},), see softmax_cross_entropy_scratch")
    labels = np.asarray(labels)
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers of shape ({n},), got {labels.dtype} "
                         f"{labels.shape}")
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"labels must lie in [0, {k}), got values in [{lo}, {hi}]")
    _KERNELS.get("softmax_cross_entropy", logits.size)(logits, labels, dlogits, row_loss)
    loss.reshape(-1)[0] = row_loss.sum() / n
    return loss, dlogits
