"""NCCLCommunicator against a double bound to CuPy's real NCCL signatures.

The double (``nccl_double.py``) reduces between threads on NumPy buffers addressed by
pointer. Its signatures are checked here against ``cupy.cuda.nccl.NcclCommunicator``:
through ``inspect`` when CuPy's NCCL loads, else from the signatures Cython embedded in
CuPy's compiled ``cupy_backends.cuda.libs.nccl`` module (readable without a GPU or
libnccl), else against the documented ones below.
"""

from __future__ import annotations

import importlib.util
import inspect
import re

import numpy as np
import pytest

from dualnn.distributed.errors import CollectiveTimeoutError
from dualnn.distributed.nccl import NCCLCommunicator

from . import nccl_double as double

# CuPy 14's NcclCommunicator, as documented (parameter names after ``self``).
DOCUMENTED = {
    "__init__": ["ndev", "commId", "rank", "config"],
    "allReduce": ["sendbuf", "recvbuf", "count", "datatype", "op", "stream"],
    "bcast": ["buff", "count", "datatype", "root", "stream"],
    "allGather": ["sendbuf", "recvbuf", "count", "datatype", "stream"],
    "abort": [],
}


def _names(signature_text):
    params = [p.strip() for p in signature_text.split(",") if p.strip()]
    names = [p.split("=")[0].strip().split()[-1] for p in params]
    return [n for n in names if n != "self"]


def real_signatures():
    """``{method: [parameter names]}`` of the real class, and where they were read."""
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from cupy.cuda import nccl
    except Exception:
        nccl = None
    if nccl is not None and getattr(nccl, "available", False):
        found = {}
        for method in DOCUMENTED:
            func = getattr(nccl.NcclCommunicator, method)
            try:
                found[method] = [p for p in inspect.signature(func).parameters if p != "self"]
            except (TypeError, ValueError):
                break
        else:
            return found, "inspect"
    spec = importlib.util.find_spec("cupy_backends.cuda.libs.nccl")
    if spec is None or not spec.origin:
        return None, "documented"
    with open(spec.origin, "rb") as f:
        text = f.read().decode("latin-1")
    found = {}
    # the embedded signature starts a string (a usage example in a docstring does not)
    init = re.search(r"[\x00\n]NcclCommunicator\(([^()]*)\)", text)
    if init:
        found["__init__"] = _names(init.group(1))
    for method in DOCUMENTED:
        if method == "__init__":
            continue
        match = re.search(rf"NcclCommunicator\.{method}\(([^()]*)\)", text)
        if match:
            found[method] = _names(match.group(1))
    return (found if len(found) == len(DOCUMENTED) else None), "compiled module"


def test_double_has_the_real_signatures():
    real, source = real_signatures()
    reference = real if real is not None else DOCUMENTED
    for method, names in reference.items():
        mine = [p for p in inspect.signature(getattr(double.NcclCommunicator, method)).parameters
                if p != "self"]
        assert mine == names, f"{method}: double {mine} vs {source} {names}"
    if real is not None:
        assert real == DOCUMENTED, f"CuPy's NCCL signatures changed ({source}): {real}"


def _communicators(size, rank):
    group = _groups[size]
    return NCCLCommunicator(group.communicator(rank), nccl=double, stream=double.HostStream(7))


_groups = {}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_allreduce_sum_and_mean_between_two_ranks(dtype):
    _groups[2] = double.ThreadGroup(2)

    def rank_fn(rank):
        comm = _communicators(2, rank)
        a = np.arange(6, dtype=dtype) * (rank + 1)
        b = np.full(3, 10.0 * (rank + 1), dtype=dtype)
        comm.allreduce_(a, "sum")
        comm.allreduce_(b, "mean")
        return a, b, comm.comm.calls

    (a0, b0, calls), (a1, b1, _) = double.run_ranks(2, rank_fn)
    expected = np.arange(6, dtype=dtype) * 3
    np.testing.assert_array_equal(a0, expected)
    np.testing.assert_array_equal(a1, expected)
    np.testing.assert_allclose(b0, 15.0)
    np.testing.assert_array_equal(b0, b1)
    assert calls[0] == ("allReduce", 7)  # the stream's pointer reached NCCL


def test_broadcast_and_allgather_between_three_ranks():
    _groups[3] = double.ThreadGroup(3)

    def rank_fn(rank):
        comm = _communicators(3, rank)
        buf = np.full(4, float(rank))
        comm.broadcast_(buf, root=2)
        gathered = comm.allgather_array(np.array([rank, -rank], dtype=np.int64))
        return buf, gathered

    results = double.run_ranks(3, rank_fn)
    for buf, gathered in results:
        np.testing.assert_array_equal(buf, np.full(4, 2.0))
        np.testing.assert_array_equal(gathered, [[0, 0], [1, -1], [2, -2]])


def test_rejects_strided_and_unknown_dtypes():
    _groups[1] = double.ThreadGroup(1)
    comm = _communicators(1, 0)
    from dualnn.errors import ConfigurationError, ShapeError
    with pytest.raises(ShapeError, match="C-contiguous"):
        comm.allreduce_(np.zeros((4, 4))[:, 0])
    with pytest.raises(ShapeError, match="floating buffer, got int64"):
        comm.allreduce_(np.zeros(3, dtype=np.int64), "mean")
    with pytest.raises(ConfigurationError, match="'avg'"):
        comm.allreduce_(np.zeros(3), "avg")
    with pytest.raises(ShapeError, match="complex128"):
        comm.allreduce_(np.zeros(3, dtype=np.complex128))


class _HungNccl:
    """NCCL whose collectives are enqueued but never complete (a peer died)."""

    NCCL_FLOAT64, NCCL_SUM = 8, 0
    last = None

    @staticmethod
    def get_unique_id():
        return (0,) * 128

    class NcclCommunicator(double.NcclCommunicator):
        def __init__(self, ndev, commId, rank, config=None):
            self.aborted = False
            _HungNccl.last = self

        def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
            pass


class _LoneBootstrap(double._ThreadCommunicator):
    def __init__(self):
        super().__init__(double.ThreadGroup(1), 0)
        self.size = 2
        self.failed = None

    def broadcast_object(self, value, root=0):
        return value

    def fail(self, error):
        self.failed = error
        raise error


def test_timeout_aborts_nccl_then_the_job():
    boot = _LoneBootstrap()
    comm = NCCLCommunicator(boot, nccl=_HungNccl, stream=double.HostStream(done=False),
                            timeout=0.2)
    with pytest.raises(CollectiveTimeoutError, match="rank 0 of 2: NCCL allreduce of 3 float64"):
        comm.allreduce_(np.zeros(3))
    assert _HungNccl.last.aborted
    assert isinstance(boot.failed, CollectiveTimeoutError)
