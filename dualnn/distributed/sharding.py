"""Which samples each rank trains on."""

from __future__ import annotations

import numpy as np

from .errors import DatasetTooSmallError


def shard_indices(permutation, rank, size, drop_remainder=False):
    """This rank's share of one epoch's sample order.

    Every rank passes the *same* permutation (same seed everywhere) and gets the strided
    slice ``permutation[rank::size]``. Strided slicing keeps global batches intact: with a
    per-rank batch ``B``, batch ``k`` of all ranks together is exactly
    ``permutation[k*B*size:(k+1)*B*size]``, the batch one process would take with batch
    ``B*size``.

    When ``size`` does not divide the number of samples ``n``, every rank must still take
    the same number of steps (a rank with one step fewer would leave the others waiting
    in the all-reduce). Two choices:

    * default, padding: the order is extended by wrapping around to its start until the
      length is a multiple of ``size``; each rank gets ``ceil(n / size)`` indices, every
      sample is seen, and at most ``size - 1`` samples twice in the epoch (as PyTorch's
      ``DistributedSampler``);
    * ``drop_remainder=True``: the last ``n % size`` samples of the order are left out of
      this epoch; each rank gets ``floor(n / size)`` indices and the shards are disjoint.
      A shuffled order leaves out different samples each epoch.

    Parameters
    ----------
    permutation : 1-D integer array, shape (n,)
    rank, size : int
    drop_remainder : bool

    Returns
    -------
    numpy.ndarray, shape (ceil(n / size),) or (floor(n / size),)

    Raises
    ------
    DatasetTooSmallError
        When ``n < size``: some rank would get no sample.
    """
    permutation = np.asarray(permutation)
    n = int(permutation.shape[0])
    if n < size:
        raise DatasetTooSmallError(
            f"the dataset has {n} sample(s) but the job has {size} ranks: every rank needs at "
            f"least one sample. Use at most {max(n, 1)} ranks or more data")
    if not 0 <= rank < size:
        raise ValueError(f"rank must lie in [0, {size}), got {rank}")
    rest = n % size
    if rest:
        if drop_remainder:
            permutation = permutation[:n - rest]
        else:
            permutation = np.concatenate([permutation, permutation[:size - rest]])
    return permutation[rank::size]
