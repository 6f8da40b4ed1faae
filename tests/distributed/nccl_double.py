"""A conformance double of ``cupy.cuda.nccl`` for machines without a GPU.

``NcclCommunicator`` here has the *same method signatures* as CuPy's (checked against
the real module by ``test_nccl_double.py``) and really reduces between "ranks" that are
threads of one process, on NumPy buffers addressed by pointer, as NCCL addresses device
memory. ``ThreadGroup`` gives each thread a host :class:`Communicator` to bootstrap from
(it carries the unique id as MPI would).
"""

from __future__ import annotations

import ctypes
import os
import threading

import numpy as np

from dualnn.distributed.communicator import Communicator

NCCL_INT8, NCCL_UINT8, NCCL_INT32, NCCL_UINT32 = 0, 1, 2, 3
NCCL_INT64, NCCL_UINT64, NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64 = 4, 5, 6, 7, 8
NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN = 0, 1, 2, 3
available = True

_DTYPES = {NCCL_INT8: np.int8, NCCL_UINT8: np.uint8, NCCL_INT32: np.int32,
           NCCL_UINT32: np.uint32, NCCL_INT64: np.int64, NCCL_UINT64: np.uint64,
           NCCL_FLOAT16: np.float16, NCCL_FLOAT32: np.float32, NCCL_FLOAT64: np.float64}
_OPS = {NCCL_SUM: np.add, NCCL_PROD: np.multiply, NCCL_MAX: np.maximum, NCCL_MIN: np.minimum}
_worlds = {}
_worlds_lock = threading.Lock()
TIMEOUT = 10.0


def get_unique_id():
    return tuple(int(b) for b in os.urandom(128))


def _view(ptr, count, datatype):
    dtype = np.dtype(_DTYPES[datatype])
    raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype, count=count)


class _World:
    def __init__(self, ndev):
        self.ndev = ndev
        self.barrier = threading.Barrier(ndev, timeout=TIMEOUT)
        self.slots = [None] * ndev


class NcclCommunicator:
    """Same constructor and collective signatures as ``cupy.cuda.nccl.NcclCommunicator``."""

    def __init__(self, ndev, commId, rank, config=None):
        with _worlds_lock:
            self._world = _worlds.setdefault(tuple(commId), _World(ndev))
        assert self._world.ndev == ndev
        self._rank = rank
        self.aborted = False
        self.calls = []

    def _exchange(self, value):
        world = self._world
        world.slots[self._rank] = value
        world.barrier.wait()
        values = list(world.slots)
        world.barrier.wait()
        return values

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        self.calls.append(("allReduce", stream))
        mine = _view(sendbuf, count, datatype).copy()
        values = self._exchange(mine)
        result = values[0].copy()
        for other in values[1:]:
            result = _OPS[op](result, other)
        _view(recvbuf, count, datatype)[:] = result

    def bcast(self, buff, count, datatype, root, stream):
        self.calls.append(("bcast", stream))
        values = self._exchange(_view(buff, count, datatype).copy())
        _view(buff, count, datatype)[:] = values[root]

    def allGather(self, sendbuf, recvbuf, count, datatype, stream):
        self.calls.append(("allGather", stream))
        values = self._exchange(_view(sendbuf, count, datatype).copy())
        _view(recvbuf, count * len(values), datatype)[:] = np.concatenate(values)

    def abort(self):
        self.aborted = True

    def destroy(self):
        pass

    def rank_id(self):
        return self._rank

    def size(self):
        return self._world.ndev


class HostStream:
    """Stands for a CUDA stream: ``ptr`` and ``done`` as ``cupy.cuda.Stream``."""

    def __init__(self, ptr=0, done=True):
        self.ptr = ptr
        self.done = done


class ThreadGroup:
    """Host communicators for ``size`` threads of this process (the bootstrap)."""

    def __init__(self, size):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=TIMEOUT)
        self.slots = [None] * size

    def communicator(self, rank):
        return _ThreadCommunicator(self, rank)


class _ThreadCommunicator(Communicator):
    name = "threads"

    def __init__(self, group, rank):
        super().__init__(timeout=5.0)
        self.group, self.rank, self.size = group, rank, group.size

    def _exchange(self, value):
        self.group.slots[self.rank] = value
        self.group.barrier.wait()
        values = list(self.group.slots)
        self.group.barrier.wait()
        return values

    def allgather(self, value):
        return self._exchange(value)

    def broadcast_object(self, value, root=0):
        return self._exchange(value)[root]

    def barrier(self):
        self._exchange(None)


def run_ranks(size, fn):
    """Run ``fn(rank)`` on ``size`` threads; return the results in rank order (or raise
    the first error)."""
    results, errors = [None] * size, []

    def target(rank):
        try:
            results[rank] = fn(rank)
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 3)
    if errors:
        raise errors[0]
    return results
