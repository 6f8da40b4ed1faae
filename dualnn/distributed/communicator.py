"""The :class:`Communicator` interface and its MPI implementation.

A communicator joins ``size`` processes (ranks ``0 .. size-1``) and offers the few
collectives data-parallel training needs: an in-place all-reduce and broadcast of one
contiguous buffer, an all-gather of one buffer or of small host values, and a barrier.
Every collective waits at most :attr:`Communicator.timeout` seconds; past that, the
communicator reports a :class:`~dualnn.distributed.errors.CollectiveTimeoutError` naming
its rank and ends the whole job (:meth:`Communicator.fail`), because a peer that stopped
answering leaves the others no way to continue.

:class:`MPICommunicator` reduces host NumPy buffers through mpi4py;
:class:`~dualnn.distributed.nccl.NCCLCommunicator` reduces CuPy buffers through NCCL.
"""

from __future__ import annotations

import atexit
import math
import os
import pickle
import sys
import time

import numpy as np

from ..errors import ConfigurationError, ShapeError
from .errors import CollectiveTimeoutError

ENV_TIMEOUT = "DUALNN_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
"""Seconds a collective may wait when neither ``timeout=`` nor the environment says."""

OPS = ("sum", "mean", "max", "min")


def resolve_timeout(timeout=None):
    """The collective timeout in seconds, or ``None`` for none.

    ``timeout`` wins; else ``DUALNN_COLLECTIVE_TIMEOUT``; else :data:`DEFAULT_TIMEOUT`.
    ``0``, a negative value, ``"none"`` or ``"off"`` mean no timeout.

    Raises
    ------
    ConfigurationError
        For a value that is not a number.
    """
    source = "timeout"
    if timeout is None:
        timeout = os.environ.get(ENV_TIMEOUT)
        source = ENV_TIMEOUT
        if timeout is None or not str(timeout).strip():
            return DEFAULT_TIMEOUT
    if isinstance(timeout, str):
        if timeout.strip().lower() in ("none", "off"):
            return None
        try:
            timeout = float(timeout)
        except ValueError:
            raise ConfigurationError(
                f"{source} must be a number of seconds (or 'off'), got {timeout!r}") from None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or math.isnan(timeout):
        raise ConfigurationError(f"{source} must be a number of seconds, got {timeout!r}")
    return None if timeout <= 0 or math.isinf(timeout) else float(timeout)


def check_op(op, buffer=None):
    """``op`` if it is a known reduction (``"mean"`` only for floating buffers)."""
    if op not in OPS:
        raise ConfigurationError(f"reduction op must be one of {OPS}, got {op!r}")
    if op == "mean" and buffer is not None and buffer.dtype.kind not in "fc":
        raise ShapeError(f"allreduce_(op='mean') needs a floating buffer, got {buffer.dtype}; "
                         "reduce with op='sum' and divide")
    return op


class Communicator:
    """What every communicator offers.

    Attributes
    ----------
    rank : int
        This process's rank, ``0 <= rank < size``.
    size : int
        Number of ranks.
    timeout : float or None
        Seconds a collective may wait before :meth:`fail` ends the job (None: forever).
    """

    rank = 0
    size = 1
    name = "communicator"

    def __init__(self, timeout=None):
        self.timeout = resolve_timeout(timeout)

    # ------------------------------------------------------------------ collectives
    def allreduce_(self, buffer, op="sum"):
        """Reduce ``buffer`` over all ranks, in place; every rank gets the result.

        Parameters
        ----------
        buffer : contiguous array, any shape
            Same shape and dtype on every rank.
        op : {"sum", "mean", "max", "min"}
            ``"mean"`` is the sum divided by :attr:`size` (floating buffers only).

        Returns
        -------
        buffer
        """
        raise NotImplementedError

    def broadcast_(self, buffer, root=0):
        """Overwrite ``buffer`` on every rank with ``root``'s, in place; returns it."""
        raise NotImplementedError

    def allgather_array(self, buffer):
        """Every rank's ``buffer`` stacked in rank order: shape ``(size, *buffer.shape)``."""
        raise NotImplementedError

    def allgather(self, value):
        """Every rank's small picklable host ``value``, as a list in rank order."""
        raise NotImplementedError

    def broadcast_object(self, value, root=0):
        """``root``'s small picklable host ``value`` on every rank."""
        raise NotImplementedError

    def barrier(self):
        """Return once every rank has called it."""
        raise NotImplementedError

    # ------------------------------------------------------------------ failures
    def fail(self, error):
        """Report ``error`` and end the job. The default raises it (one process only)."""
        raise error

    def wait(self, is_done, operation):
        """Poll ``is_done()`` until it is true or :attr:`timeout` has passed.

        Spins for the first millisecond (a small collective completes in microseconds),
        then sleeps briefly between polls so a rank that waits long does not hold a core.
        On timeout, calls :meth:`fail` with a :class:`CollectiveTimeoutError`.
        """
        if is_done():
            return
        start = time.monotonic()
        deadline = None if self.timeout is None else start + self.timeout
        while not is_done():
            now = time.monotonic()
            if deadline is not None and now > deadline:
                error = self.timeout_error(operation)
                self.fail(error)
                raise error  # fail() returned (it should end the job): do not go on
            if now - start > 1e-3:
                time.sleep(5e-5)

    def timeout_error(self, operation):
        return CollectiveTimeoutError(
            f"rank {self.rank} of {self.size}: {operation} waited longer than the collective "
            f"timeout of {self.timeout:g} s; another rank is stuck, slower than the timeout "
            f"allows, or has died. Raise the timeout with dn.distributed.init(timeout=...) or "
            f"{ENV_TIMEOUT}=<seconds>", rank=self.rank, operation=operation,
            timeout=self.timeout)

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.rank}, size={self.size}, " \
               f"timeout={self.timeout})"


def describe_buffer(buffer):
    return f"{buffer.size} {buffer.dtype} values"


class MPICommunicator(Communicator):
    """A communicator over MPI (mpi4py) for host NumPy buffers.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        Default ``MPI.COMM_WORLD``.
    timeout : float or None
        See :func:`resolve_timeout`. With a timeout the collectives are the non-blocking
        ones (``Iallreduce`` ...) polled with ``Test()`` against the deadline; without,
        the blocking ones.

    Raises
    ------
    MPIUnavailableError
        mpi4py or the MPI library is missing (``pip install -e ".[mpi]"``).
    """

    name = "mpi"

    def __init__(self, comm=None, timeout=None):
        from ._mpi import import_mpi

        super().__init__(timeout)
        self.MPI = MPI = import_mpi()
        if not MPI.Is_initialized():  # mpi4py was imported without MPI_Init (describe())
            MPI.Init()
            atexit.register(_finalize, MPI)
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self._ops = {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}

    def _check(self, buffer, what):
        if not isinstance(buffer, np.ndarray):
            raise ShapeError(f"MPICommunicator.{what}: expected a NumPy array, got "
                             f"{type(buffer).__module__}.{type(buffer).__name__} (device "
                             "arrays go through NCCLCommunicator or a host copy)")
        if not buffer.flags.c_contiguous:
            raise ShapeError(f"MPICommunicator.{what}: expected a C-contiguous array, got "
                             f"a strided view of shape {buffer.shape}")
        return buffer

    def _complete(self, request, operation):
        if self.timeout is None:
            request.Wait()
        else:
            self.wait(request.Test, operation)

    def allreduce_(self, buffer, op="sum"):
        self._check(buffer, "allreduce_")
        check_op(op, buffer)
        if self.size > 1:
            mpi_op = self._ops[op]
            if self.timeout is None:
                self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=mpi_op)
            else:
                request = self.comm.Iallreduce(self.MPI.IN_PLACE, buffer, op=mpi_op)
                self._complete(request, f"allreduce of {describe_buffer(buffer)}")
        if op == "mean" and self.size > 1:
            buffer /= self.size
        return buffer

    def broadcast_(self, buffer, root=0):
        self._check(buffer, "broadcast_")
        if self.size > 1:
            request = self.comm.Ibcast(buffer, root=root)
            self._complete(request, f"broadcast of {describe_buffer(buffer)} from rank {root}")
        return buffer

    def allgather_array(self, buffer):
        self._check(buffer, "allgather_array")
        out = np.empty((self.size,) + buffer.shape, dtype=buffer.dtype)
        if self.size == 1:
            out[0] = buffer
            return out
        request = self.comm.Iallgather(buffer, out)
        self._complete(request, f"allgather of {describe_buffer(buffer)}")
        return out

    def allgather(self, value):
        payload = np.frombuffer(pickle.dumps(value), dtype=np.uint8)
        lengths = self.allgather_array(np.array([payload.size], dtype=np.int64)).ravel()
        if self.size == 1:
            return [value]
        out = np.empty(int(lengths.sum()), dtype=np.uint8)
        request = self.comm.Iallgatherv(payload, [out, lengths.tolist()])
        self._complete(request, "allgather of host values")
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        return [pickle.loads(out[offsets[i]:offsets[i + 1]].tobytes())
                for i in range(self.size)]

    def broadcast_object(self, value, root=0):
        if self.size == 1:
            return value
        payload = pickle.dumps(value) if self.rank == root else b""
        length = self.broadcast_(np.array([len(payload)], dtype=np.int64), root)
        data = np.frombuffer(payload, dtype=np.uint8).copy() if self.rank == root \
            else np.empty(int(length[0]), dtype=np.uint8)
        self.broadcast_(data, root)
        return value if self.rank == root else pickle.loads(data.tobytes())

    def barrier(self):
        if self.size > 1:
            self._complete(self.comm.Ibarrier(), "barrier")

    def fail(self, error):
        """Write ``error`` to stderr (rank named) and abort every rank (``MPI_Abort``)."""
        report_and_abort(self, error)


def _finalize(MPI):
    if MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.Finalize()


ABORT_GRACE_SECONDS = 0.5
"""Pause between reporting a failure and aborting the job (see :func:`report_and_abort`)."""


def report_failure(comm, error):
    """One line naming the rank and the error, flushed at once (the job may be killed
    while anything longer, such as a traceback, is still being written)."""
    sys.stderr.write(f"dualnn.distributed: rank {comm.rank} of {comm.size} failed: "
                     f"{type(error).__name__}: {error}\n")
    sys.stderr.flush()


def report_and_abort(comm, error, code=1, *, reported=False):
    """Print ``error`` for rank ``comm.rank`` on stderr (unless ``reported``), then
    ``MPI_Abort`` the job."""
    if not reported:
        report_failure(comm, error)
    # MPI_Abort makes the launcher kill every process at once, dropping output its proxies
    # have not forwarded yet: give them a moment to pass on the lines that name the error.
    time.sleep(ABORT_GRACE_SECONDS)
    comm.comm.Abort(code)
    os._exit(code)  # MPI_Abort may return before the launcher kills this process
