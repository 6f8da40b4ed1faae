"""The NCCL communicator: CuPy gradients reduced on the GPUs, through ``cupy.cuda.nccl``.

PyPI MPI builds are not CUDA-aware, so device buffers never go through MPI. MPI only
starts the processes and hands NCCL its unique id: rank 0 calls ``nccl.get_unique_id()``,
every rank receives it over MPI and builds ``nccl.NcclCommunicator(size, uid, rank)``.
The collectives are CuPy's thin bindings of the NCCL C API::

    allReduce(sendbuf_ptr, recvbuf_ptr, count, datatype, op, stream_ptr)
    bcast(buff_ptr, count, datatype, root, stream_ptr)
    allGather(sendbuf_ptr, recvbuf_ptr, count, datatype, stream_ptr)

NCCL enqueues them on a CUDA stream and returns at once; :meth:`NCCLCommunicator.wait_stream`
polls the stream against the collective timeout and, past it, aborts the NCCL
communicator and then the MPI job.
"""

from __future__ import annotations

from .communicator import Communicator, check_op, describe_buffer
from .errors import NCCLUnavailableError

DTYPES = {"int8": "NCCL_INT8", "uint8": "NCCL_UINT8", "int32": "NCCL_INT32",
          "uint32": "NCCL_UINT32", "int64": "NCCL_INT64", "uint64": "NCCL_UINT64",
          "float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64"}
OPS = {"sum": "NCCL_SUM", "mean": "NCCL_SUM", "max": "NCCL_MAX", "min": "NCCL_MIN"}


def import_nccl():
    """``cupy.cuda.nccl``, or :class:`NCCLUnavailableError` saying what is missing."""
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # CuPy warns when libnccl is absent
            from cupy.cuda import nccl
    except Exception as exc:
        raise NCCLUnavailableError(
            f"CuPy is not importable ({type(exc).__name__}: {exc}); install the GPU extra: "
            "pip install -e \".[gpu]\"") from None
    if not getattr(nccl, "available", False) or not hasattr(nccl, "NcclCommunicator"):
        raise NCCLUnavailableError(
            "CuPy is installed but cannot load the NCCL library (libnccl.so.2); install it: "
            "pip install \"nvidia-nccl-cu12>=2.18.1,<3\"")
    return nccl


def nccl_available():
    try:
        import_nccl()
    except NCCLUnavailableError:
        return False
    return True


def _pointer(array):
    """Device address of a CuPy array (``.data.ptr``); host address of a NumPy one."""
    data = getattr(array, "data", None)
    ptr = getattr(data, "ptr", None)
    return int(ptr) if ptr is not None else int(array.ctypes.data)


class NCCLCommunicator(Communicator):
    """A communicator over NCCL for contiguous CuPy buffers on this rank's GPU.

    Parameters
    ----------
    bootstrap : Communicator
        An initialised host communicator (usually :class:`MPICommunicator`) spanning the
        same ranks; it carries the NCCL unique id and is what :meth:`fail` aborts.
    nccl : module, optional
        The NCCL bindings; default ``cupy.cuda.nccl``. Tests pass a double with the same
        signatures.
    stream : object with ``ptr`` and ``done``, optional
        The stream the collectives run on; default CuPy's current stream at each call.
    timeout : float or None
        Default: the bootstrap communicator's.

    Raises
    ------
    NCCLUnavailableError
        CuPy or the NCCL library is missing.
    """

    name = "nccl"

    def __init__(self, bootstrap, *, nccl=None, stream=None, timeout=None):
        super().__init__(timeout)
        if timeout is None:
            self.timeout = bootstrap.timeout
        self.nccl = import_nccl() if nccl is None else nccl
        self.bootstrap = bootstrap
        self.rank, self.size = bootstrap.rank, bootstrap.size
        self._stream = stream
        uid = self.nccl.get_unique_id() if self.rank == 0 else None
        uid = bootstrap.broadcast_object(uid, root=0)
        self.comm = self.nccl.NcclCommunicator(self.size, uid, self.rank)

    # ------------------------------------------------------------------ helpers
    def stream(self):
        if self._stream is not None:
            return self._stream
        import cupy
        return cupy.cuda.get_current_stream()

    def _dtype(self, buffer, what):
        from ..errors import ShapeError
        name = str(buffer.dtype)
        if name not in DTYPES:
            raise ShapeError(f"NCCLCommunicator.{what}: NCCL cannot reduce {name} buffers; "
                             f"expected one of {sorted(DTYPES)}")
        if not buffer.flags.c_contiguous:
            raise ShapeError(f"NCCLCommunicator.{what}: expected a C-contiguous buffer, "
                             f"got a strided view of shape {tuple(buffer.shape)}")
        return getattr(self.nccl, DTYPES[name])

    def wait_stream(self, stream, operation):
        """Wait for ``stream`` to drain, at most :attr:`timeout` seconds."""
        self.wait(lambda: bool(stream.done), operation)

    # ------------------------------------------------------------------ collectives
    def allreduce_(self, buffer, op="sum"):
        check_op(op, buffer)
        datatype = self._dtype(buffer, "allreduce_")
        if self.size > 1:
            stream = self.stream()
            ptr = _pointer(buffer)
            self.comm.allReduce(ptr, ptr, int(buffer.size), datatype,
                                getattr(self.nccl, OPS[op]), int(stream.ptr))
            self.wait_stream(stream, f"NCCL allreduce of {describe_buffer(buffer)}")
        if op == "mean" and self.size > 1:
            buffer /= self.size
        return buffer

    def broadcast_(self, buffer, root=0):
        datatype = self._dtype(buffer, "broadcast_")
        if self.size > 1:
            stream = self.stream()
            self.comm.bcast(_pointer(buffer), int(buffer.size), datatype, int(root),
                            int(stream.ptr))
            self.wait_stream(stream, f"NCCL broadcast of {describe_buffer(buffer)}")
        return buffer

    def allgather_array(self, buffer):
        datatype = self._dtype(buffer, "allgather_array")
        xp = _namespace(buffer)
        out = xp.empty((self.size,) + tuple(buffer.shape), dtype=buffer.dtype)
        if self.size == 1:
            out[0] = buffer
            return out
        stream = self.stream()
        self.comm.allGather(_pointer(buffer), _pointer(out), int(buffer.size), datatype,
                            int(stream.ptr))
        self.wait_stream(stream, f"NCCL allgather of {describe_buffer(buffer)}")
        return out

    def allgather(self, value):
        return self.bootstrap.allgather(value)

    def broadcast_object(self, value, root=0):
        return self.bootstrap.broadcast_object(value, root)

    def barrier(self):
        self.bootstrap.barrier()

    def fail(self, error):
        """Abort the NCCL communicator (frees ranks blocked in NCCL), then the job."""
        try:
            self.comm.abort()
        finally:
            self.bootstrap.fail(error)


def _namespace(array):
    module = type(array).__module__.split(".")[0]
    if module == "cupy":
        import cupy
        return cupy
    import numpy
    return numpy
