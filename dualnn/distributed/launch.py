"""Start ``mpiexec -n N python -m mpi4py ...`` from Python, with a timeout that kills.

Used by the tests and the benchmark. The job runs in its own process group; on timeout
the group gets SIGTERM, then SIGKILL two seconds later, so no rank outlives the call.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

from ._mpi import find_mpiexec, launcher_env, mpi4py_available
from .errors import MPIUnavailableError


@dataclasses.dataclass
class JobResult:
    """What :func:`run` saw: exit code, output, wall time, whether it was killed."""

    returncode: int
    stdout: str
    stderr: str
    elapsed: float
    timed_out: bool


def can_launch():
    """True when mpi4py and ``mpiexec`` are both installed."""
    return mpi4py_available() and find_mpiexec() is not None


def command(args, n):
    """The argv of ``mpiexec -n n <this python> -m mpi4py *args``."""
    mpiexec = find_mpiexec()
    if mpiexec is None or not mpi4py_available():
        raise MPIUnavailableError(
            'launching a job needs mpi4py and mpiexec: pip install -e ".[mpi]"')
    return [mpiexec, "-n", str(int(n)), sys.executable, "-m", "mpi4py", *map(str, args)]


def run(args, n=2, timeout=60.0, env=None, cwd=None):
    """Run ``args`` (a script path and its arguments, or ``["-m", module, ...]``) on ``n``
    ranks and wait at most ``timeout`` seconds.

    Parameters
    ----------
    args : list of str
    n : int
    timeout : float
    env : dict, optional
        Extra environment variables on top of this process's.

    Returns
    -------
    JobResult
    """
    full_env = launcher_env()
    full_env.update(env or {})
    started = time.monotonic()
    proc = subprocess.Popen(command(args, n), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=full_env, cwd=cwd, start_new_session=True)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(proc)
        out, err = proc.communicate()
    return JobResult(proc.returncode, out, err, time.monotonic() - started, timed_out)


def kill_group(proc, grace=2.0):
    """SIGTERM ``proc``'s process group, then SIGKILL it after ``grace`` seconds."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
