"""A :class:`~dualnn.data.DataLoader` that yields only this rank's share of each epoch."""

from __future__ import annotations

import numpy as np

from ..data.loader import batch_sizes
from .sharding import shard_indices


class ShardedLoader:
    """Wrap a DataLoader so that each rank iterates over its shard of every epoch.

    Every epoch draws the full order from the loader's generator exactly as the loader
    would (so every rank must start with the same generator state:
    :meth:`TrainingContext.broadcast_model` copies rank 0's), takes this rank's shard
    (:func:`shard_indices`) and cuts it into batches of the loader's ``batch_size`` (per
    rank). Every rank gets the same number of batches of the same sizes. Input noise, if
    any, is drawn from the same generator after the order, as the loader does.

    Parameters
    ----------
    loader : DataLoader
    rank, size : int
    drop_remainder : bool
        See :func:`shard_indices`.

    Attributes
    ----------
    n : int
        Samples per epoch on this rank before batching.
    """

    def __init__(self, loader, rank, size, drop_remainder=False):
        self.loader = loader
        self.rank, self.size = int(rank), int(size)
        self.drop_remainder = bool(drop_remainder)
        self.n = len(shard_indices(np.arange(loader.n), self.rank, self.size,
                                   self.drop_remainder))

    def __getattr__(self, name):  # X, y, batch_size, shuffle, min_batch_size, ...
        return getattr(self.loader, name)

    def batch_sizes(self):
        """Sizes of this rank's batches in one epoch (the same on every rank)."""
        loader = self.loader
        return batch_sizes(self.n, loader.batch_size, loader.drop_last, loader.min_batch_size)

    def __len__(self):
        return len(self.batch_sizes())

    @property
    def samples_per_epoch(self):
        return sum(self.batch_sizes())

    def __iter__(self):
        loader = self.loader
        rng = loader._generator() if (loader.shuffle or loader.input_noise) else None
        order = rng.permutation(loader.n) if loader.shuffle else np.arange(loader.n)
        mine = shard_indices(order, self.rank, self.size, self.drop_remainder)
        start = 0
        for size in self.batch_sizes():
            index = np.sort(mine[start:start + size])
            start += size
            yield loader._batch(index, rng)

    def __repr__(self):
        return f"ShardedLoader({self.loader!r}, rank={self.rank}, size={self.size})"
