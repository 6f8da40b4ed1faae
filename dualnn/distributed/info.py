"""``describe()``: what ``dualnn info`` shows about distributed training."""

from __future__ import annotations

import sys

from . import runtime
from ._mpi import find_mpiexec, mpi4py_available
from .communicator import resolve_timeout


def describe():
    """A dict of MPI and NCCL facts, safe to call anywhere (it never starts MPI).

    Keys: ``mpi4py`` (version or None), ``mpi_library`` (first line of the MPI library's
    version string, or why there is none), ``mpi_standard``, ``mpiexec`` (path or None),
    ``initialized``, ``rank``, ``size``, ``local_rank``, ``collective_timeout``,
    ``nccl`` (``"available (version N)"`` or why not).
    """
    info = {"mpi4py": None, "mpi_library": None, "mpi_standard": None,
            "mpiexec": find_mpiexec(), "initialized": runtime.is_initialized(),
            "rank": runtime.rank(), "size": runtime.size(), "local_rank": runtime.local_rank()}
    try:
        info["collective_timeout"] = resolve_timeout()
    except Exception as exc:  # a bad DUALNN_COLLECTIVE_TIMEOUT; info must still print
        info["collective_timeout"] = f"invalid ({exc})"
    if state := runtime.state():
        info["collective_timeout"] = state.comm.timeout
    if not mpi4py_available():
        info["mpi_library"] = 'not installed (pip install -e ".[mpi]")'
    else:
        try:
            import mpi4py

            from ._mpi import import_mpi
            info["mpi4py"] = mpi4py.__version__
            MPI = import_mpi(initialize="mpi4py.MPI" in sys.modules)
            info["mpi_library"] = MPI.Get_library_version().strip().splitlines()[0].strip()
            info["mpi_standard"] = "{}.{}".format(*MPI.Get_version())
        except Exception as exc:
            info["mpi_library"] = f"unavailable ({exc})"
    info["nccl"] = _nccl_status()
    return info


def _nccl_status():
    from .errors import NCCLUnavailableError
    from .nccl import import_nccl

    try:
        nccl = import_nccl()
    except NCCLUnavailableError as exc:
        return f"unavailable: {exc}"
    try:
        return f"available (version {nccl.get_version()})"
    except Exception:
        return "available"
