"""Exceptions raised by :mod:`dualnn.distributed`.

Each derives from :class:`dualnn.errors.DualnnError` (through :class:`DistributedError`)
and from the built-in exception a Python user would expect.
"""

from __future__ import annotations

from ..errors import DualnnError


class DistributedError(DualnnError):
    """Base class of every error of data-parallel training."""


class MPIUnavailableError(DistributedError, ImportError):
    """mpi4py (or the MPI library it needs) cannot be imported here."""


class NCCLUnavailableError(DistributedError, RuntimeError):
    """CuPy's NCCL bindings (``cupy.cuda.nccl``) cannot be used here."""


class NotInitializedError(DistributedError, RuntimeError):
    """A distributed call was made before :func:`dualnn.distributed.init`."""


class CollectiveTimeoutError(DistributedError, TimeoutError):
    """A collective operation waited longer than the configured timeout.

    Attributes
    ----------
    rank : int
        The rank that gave up waiting.
    operation : str
        What it was waiting for (``"allreduce of 1024 float64 values"``).
    timeout : float
        The timeout in seconds.
    """

    def __init__(self, message, *, rank=None, operation=None, timeout=None):
        super().__init__(message)
        self.rank = rank
        self.operation = operation
        self.timeout = timeout


class RankMismatchError(DistributedError, ValueError):
    """Ranks disagree on something that must be identical (model architecture, dtypes,
    metric names); the message names the rank and the first difference."""


class DatasetTooSmallError(DistributedError, ValueError):
    """The dataset has fewer samples than there are ranks."""


__all__ = [
    "CollectiveTimeoutError",
    "DatasetTooSmallError",
    "DistributedError",
    "MPIUnavailableError",
    "NCCLUnavailableError",
    "NotInitializedError",
    "RankMismatchError",
]
