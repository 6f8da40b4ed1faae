"""Readable definition of the softmax cross-entropy op, written once for any Array API namespace.

Each function takes the array namespace ``xp`` first and returns new arrays; it never
writes into its arguments. Only Array API standard calls are used, so this runs on NumPy,
CuPy and ``array_api_strict`` alike. The CPU (``cpu.py``) and CUDA (``cuda.py``) kernels
beside this module compute the same results; tests compare them with these twins.
"""

from __future__ import annotations


def softmax(xp, z):
    """Row-wise softmax, shifted by the row maximum so ``exp`` never overflows."""
    shifted = z - xp.max(z, axis=1, keepdims=True)
    e = xp.exp(shifted)
    return e / xp.sum(e, axis=1, keepdims=True)


def log_softmax(xp, z):
    """Row-wise ``log(softmax(z))`` through a stable log-sum-exp."""
    shifted = z - xp.max(z, axis=1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


def one_hot(xp, labels, classes, dtype):
    """``(n, classes)`` array with 1 at ``labels[i]`` in row ``i``."""
    hits = xp.reshape(labels, (-1, 1)) == xp.reshape(xp.arange(classes), (1, -1))
    return xp.astype(hits, dtype)


def softmax_cross_entropy(xp, logits, labels):
    """Mean softmax cross-entropy and its gradient with respect to the logits.

    Parameters
    ----------
    logits : array, shape (n, k)
    labels : integer array, shape (n,), values in [0, k)

    Returns
    -------
    loss : 0-d array
        ``-mean_i log softmax(logits)_{i, labels_i}``.
    dlogits : array, shape (n, k)
        ``(softmax(logits) - onehot(labels)) / n``.
    """
    n, k = logits.shape
    logp = log_softmax(xp, logits)
    target = one_hot(xp, labels, k, logits.dtype)
    # where, not a product: a -inf logit off the label must not turn into -inf * 0 = NaN.
    picked = xp.where(target > 0, logp, xp.zeros_like(logp))
    loss = -xp.sum(picked) / n
    dlogits = (xp.exp(logp) - target) / n
    return loss, dlogits

