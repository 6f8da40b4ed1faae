"""Data-parallel training over several processes: MPI on the CPU, NCCL on GPUs.

Start the job with ``mpiexec -n N python -m mpi4py script.py``; each process calls
:func:`init`, builds the same model, wraps its optimizer in
:class:`DistributedOptimizer` and trains on its own shard of the data
(:func:`current` ``().shard(...)``). Gradients are averaged over the ranks before every
update, so N ranks with batch ``B`` each train like one process with batch ``N * B``.

``batch_size`` is per rank: the global batch is ``batch_size * size()``.
"""

from __future__ import annotations

from . import errors
from .communicator import Communicator, MPICommunicator, resolve_timeout
from .context import TrainingContext, current
from .info import describe
from .moments import merge_moments
from .nccl import NCCLCommunicator
from .optimizer import DistributedOptimizer
from .runtime import init, is_initialized, local_rank, rank, size
from .sharding import shard_indices


def sync_batchnorm_stats(count, mean, m2):
    """Merge this rank's batch-norm statistics with every rank's (Chan's formula).

    See :meth:`TrainingContext.sync_batchnorm_stats`. Returns ``(count, mean, m2)``
    unchanged when :func:`init` has not been called (a job of one process).
    """
    context = current()
    if context is None:
        return count, mean, m2
    return context.sync_batchnorm_stats(count, mean, m2)


def allreduce_(array, op="sum"):
    """Reduce ``array`` (NumPy or CuPy, any backend's) over all ranks, in place.

    For layers that need a global sum, e.g. the backward pass of a synchronized batch
    norm (``sum(dy)`` and ``sum(dy * xhat)`` over the global batch, packed in one
    buffer). Returns ``array`` unchanged when :func:`init` has not been called.
    """
    context = current()
    if context is None:
        return array
    from ..device import backend_of

    return context._allreduce_(backend_of(array, "allreduce_"), array, op)


__all__ = [
    "Communicator",
    "DistributedOptimizer",
    "MPICommunicator",
    "NCCLCommunicator",
    "TrainingContext",
    "allreduce_",
    "current",
    "describe",
    "errors",
    "init",
    "is_initialized",
    "local_rank",
    "merge_moments",
    "rank",
    "resolve_timeout",
    "shard_indices",
    "size",
    "sync_batchnorm_stats",
]
