"""The collectives a layer may need in data-parallel training, without knowing how the
job was started.

A synchronized :class:`~dualnn.layers.BatchNorm` needs batch statistics and two sums over
every rank. Layers sit below :mod:`dualnn.distributed` and never import it; instead
:func:`dualnn.distributed.init` installs itself here as the provider. Until then (a job of
one process) every collective is the identity.
"""

from __future__ import annotations

_provider = None


def install(provider):
    """Route the collectives below to ``provider`` (``None`` restores one process).

    ``provider`` offers ``size()``, ``sync_batchnorm_stats(count, mean, m2)`` and
    ``allreduce_(array, op)``, as :mod:`dualnn.distributed` does.
    """
    global _provider
    _provider = provider


def size():
    """Number of ranks taking part (1 before :func:`dualnn.distributed.init`)."""
    return 1 if _provider is None else int(_provider.size())


def sync_moments(count, mean, m2):
    """Merge per-rank batch statistics ``(count, mean, M2)`` over every rank (Chan's
    formula); unchanged in a job of one process."""
    if _provider is None:
        return count, mean, m2
    return _provider.sync_batchnorm_stats(count, mean, m2)


def allreduce_sum_(array):
    """Sum ``array`` over every rank, in place; returns it (unchanged in one process)."""
    if _provider is None:
        return array
    return _provider.allreduce_(array, "sum")
