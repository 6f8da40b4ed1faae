"""Finding and loading MPI: mpi4py (imported lazily), the MPI library and ``mpiexec``.

mpi4py looks for ``libmpi`` under the running interpreter's prefix. In a virtual
environment that shares another environment's packages (a ``.pth`` file pointing at
them), the ``mpich`` wheel's library sits under *that* environment's ``lib/`` instead;
:func:`libmpi_hint` finds it next to the installed mpi4py so that ``MPI4PY_LIBMPI`` can
point there. Likewise ``mpiexec`` must be run by its real path, because MPICH's launcher
looks for its helper ``hydra_pmi_proxy`` beside the path it was started as.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import sys

from .errors import MPIUnavailableError

INSTALL_HINT = 'pip install -e ".[mpi]"  (mpi4py>=4 and the mpich wheel)'


def mpi4py_available():
    """True when the mpi4py package is installed (without importing it)."""
    try:
        return importlib.util.find_spec("mpi4py") is not None
    except (ImportError, ValueError):
        return False


def libmpi_hint():
    """Path of an MPI library beside the installed mpi4py, or None.

    Only needed when mpi4py would not find one under ``sys.prefix``: returns None when
    ``MPI4PY_LIBMPI`` is already set or ``<sys.prefix>/lib`` holds a ``libmpi``.
    """
    if os.environ.get("MPI4PY_LIBMPI") or _libmpi_in(os.path.join(sys.prefix, "lib")):
        return None
    try:
        spec = importlib.util.find_spec("mpi4py")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    # <prefix>/lib/pythonX.Y/site-packages/mpi4py/__init__.py -> <prefix>/lib
    libdir = os.path.abspath(os.path.join(os.path.dirname(spec.origin), "..", "..", ".."))
    return _libmpi_in(libdir)


def _libmpi_in(libdir):
    for pattern in ("libmpi.so.12", "libmpi.so.40", "libmpi.so", "libmpi.dylib"):
        found = glob.glob(os.path.join(libdir, pattern))
        if found:
            return found[0]
    return None


def import_mpi(initialize=True):
    """The ``mpi4py.MPI`` module, imported on first use.

    Parameters
    ----------
    initialize : bool
        When this call is the first import: whether importing may call ``MPI_Init``
        (``False`` for read-only queries such as the library version).

    Raises
    ------
    MPIUnavailableError
        mpi4py is not installed, or it cannot load an MPI library; the message says
        what to install.
    """
    module = sys.modules.get("mpi4py.MPI")
    if module is not None:
        return module
    if not mpi4py_available():
        raise MPIUnavailableError(
            "dualnn.distributed needs mpi4py and an MPI library, and mpi4py is not installed. "
            f"Install the MPI extra: {INSTALL_HINT}")
    hint = libmpi_hint()
    if hint is not None:
        os.environ["MPI4PY_LIBMPI"] = hint
    try:
        import mpi4py
        if not initialize:
            mpi4py.rc.initialize = False
        from mpi4py import MPI
    except Exception as exc:  # ImportError, or RuntimeError "cannot load MPI library"
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise MPIUnavailableError(
            f"dualnn.distributed could not load MPI through mpi4py ({type(exc).__name__}: "
            f"{first}). Install the MPI extra: {INSTALL_HINT}, or point MPI4PY_LIBMPI at "
            "your libmpi.so") from None
    return MPI


def find_mpiexec():
    """Absolute, symlink-resolved path of ``mpiexec``, or None when there is none."""
    candidates = [os.path.join(os.path.dirname(sys.executable), "mpiexec"),
                  shutil.which("mpiexec")]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.realpath(path)
    return None


def launcher_env(base=None):
    """Environment for processes started by ``mpiexec``: ``base`` (default: ours) plus
    ``MPI4PY_LIBMPI`` when mpi4py would not find the library on its own."""
    env = dict(os.environ if base is None else base)
    hint = libmpi_hint()
    if hint is not None and not env.get("MPI4PY_LIBMPI"):
        env["MPI4PY_LIBMPI"] = hint
    return env
