"""Process-wide distributed state: :func:`init`, rank, size, local rank.

:func:`init` is idempotent. It starts MPI (through mpi4py), finds this process's rank,
the number of ranks and its rank among the processes of its node, and, on a machine
with GPUs, makes ``gpu:<local rank>`` this process's dualnn device and builds an NCCL
communicator for device gradients. It also installs an exception hook so that an
uncaught exception on any rank is printed with the rank's number and ends every rank at
once (``MPI_Abort``) instead of leaving the others blocked in their next collective.
"""

from __future__ import annotations

import os
import sys
import threading

from .communicator import MPICommunicator, report_and_abort, report_failure, resolve_timeout

_lock = threading.Lock()
_state = None


class _State:
    def __init__(self, comm, local_rank, local_size, device, nccl):
        self.comm = comm
        self.local_rank = local_rank
        self.local_size = local_size
        self.device = device
        self.nccl = nccl
        self.previous_excepthook = None


def init(timeout=None, *, device=None):
    """Join the job started by ``mpiexec``; returns ``(rank, size, local_rank)``.

    Calling it again returns the same values (a new ``timeout`` replaces the old one).
    Run without ``mpiexec``, a process is a job of one rank.

    Parameters
    ----------
    timeout : float, str or None
        Seconds a collective may wait before the job is ended with a
        :class:`~dualnn.distributed.errors.CollectiveTimeoutError`; default
        ``DUALNN_COLLECTIVE_TIMEOUT``, else 600. ``0`` or ``"off"``: wait forever.
    device : str or None
        ``None``: ``gpu:<local rank>`` (modulo the GPU count) when this machine has a GPU
        and ``DUALNN_DEVICE`` does not say ``cpu``, else ``"cpu"``. ``"cpu"`` forces the
        CPU; ``"gpu"`` requires a GPU.

    Raises
    ------
    MPIUnavailableError
        mpi4py or the MPI library is missing (``pip install -e ".[mpi]"``).
    """
    global _state
    with _lock:
        if _state is not None:
            if timeout is not None:
                _state.comm.timeout = resolve_timeout(timeout)
                if _state.nccl is not None:
                    _state.nccl.timeout = _state.comm.timeout
            return rank(), size(), local_rank()
        comm = MPICommunicator(timeout=timeout)
        local = comm.comm.Split_type(comm.MPI.COMM_TYPE_SHARED, key=comm.rank)
        local_rank_, local_size = local.Get_rank(), local.Get_size()
        local.Free()
        chosen = _choose_device(device, local_rank_)
        nccl = None
        if chosen != "cpu":
            from .nccl import NCCLCommunicator, nccl_available
            if nccl_available():
                nccl = NCCLCommunicator(comm)
        _state = _State(comm, local_rank_, local_size, chosen, nccl)
        _install_excepthook(_state)
        _write_rank_map(comm)
        _provide_collectives()
        return rank(), size(), local_rank()


def _provide_collectives():
    """Let layers (a synchronized BatchNorm) reach this job's collectives through
    :mod:`dualnn.collectives` (they sit below this package and never import it)."""
    import dualnn.distributed as provider

    from .. import collectives

    collectives.install(provider)


def _choose_device(device, local_rank_):
    from .. import device as devices

    wanted = device if device is not None else os.environ.get(devices.ENV_DEVICE, "auto")
    wanted = (wanted or "auto").strip().lower()
    if wanted == "cpu":
        devices.set_device("cpu")
        return "cpu"
    gpus = devices.available_devices()[1:]
    if not gpus:
        if wanted == "auto":
            return "cpu"
        devices.canonical_device("gpu")  # raises DeviceUnavailableError saying why
    chosen = f"gpu:{local_rank_ % len(gpus)}"
    devices.set_device(chosen)
    return chosen


def _install_excepthook(state):
    state.previous_excepthook = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            state.previous_excepthook(kind, value, tb)
            return
        comm = state.comm
        sys.stderr.write(f"dualnn.distributed: uncaught exception on rank {comm.rank} of "
                         f"{comm.size} (pid {os.getpid()}); aborting every rank\n")
        report_failure(comm, value)  # first: the traceback may not get out whole
        state.previous_excepthook(kind, value, tb)
        report_and_abort(comm, value, reported=True)

    sys.excepthook = hook


ENV_RANK_MAP = "DUALNN_RANK_MAP"
"""Set by :func:`dualnn.distributed.launch.run`: the file where rank 0 writes every rank's
node and pid, so that the launcher can name a rank that died without a word."""


def _write_rank_map(comm):
    places = comm.allgather((os.uname().nodename, os.getpid()))
    path = os.environ.get(ENV_RANK_MAP)
    if path and comm.rank == 0:
        import json

        with open(path, "w", encoding="utf-8") as fh:
            json.dump([{"rank": r, "node": node, "pid": pid}
                       for r, (node, pid) in enumerate(places)], fh)


def is_initialized():
    """True once :func:`init` has run in this process."""
    return _state is not None


def state():
    """The internal state, or None before :func:`init`."""
    return _state


def rank():
    """This process's rank (0 before :func:`init`)."""
    return 0 if _state is None else _state.comm.rank


def size():
    """The number of ranks (1 before :func:`init`)."""
    return 1 if _state is None else _state.comm.size


def local_rank():
    """This process's rank among those on its node (0 before :func:`init`)."""
    return 0 if _state is None else _state.local_rank


def communicator(device="cpu"):
    """The communicator for buffers on ``device``: NCCL for a GPU when it is available,
    else MPI (device buffers then travel through a host copy)."""
    from .errors import NotInitializedError

    if _state is None:
        raise NotInitializedError(
            "dualnn.distributed is not initialised: call dn.distributed.init() first, in a "
            "program started with mpiexec -n N python -m mpi4py script.py")
    if device != "cpu" and _state.nccl is not None:
        return _state.nccl
    return _state.comm
