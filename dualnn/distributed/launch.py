"""Start ``mpiexec -n N python -m mpi4py ...`` from Python, with a timeout that kills.

Used by the tests and the benchmark. The job runs in its own process group; on timeout
the group gets SIGTERM, then SIGKILL two seconds later, so no rank outlives the call.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from ._mpi import find_mpiexec, launcher_env, mpi4py_available
from .errors import MPIUnavailableError
from .runtime import ENV_RANK_MAP


@dataclasses.dataclass
class JobResult:
    """What :func:`run` saw: exit code, output, wall time, whether it was killed."""

    returncode: int
    stdout: str
    stderr: str
    elapsed: float
    timed_out: bool
    dead_ranks: tuple = ()
    """Ranks the launcher reported killed by a signal (``mpiexec`` names only pids)."""


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
    with tempfile.TemporaryDirectory(prefix="dualnn-job-") as scratch:
        full_env[ENV_RANK_MAP] = os.path.join(scratch, "ranks.json")
        proc = subprocess.Popen(command(args, n), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=full_env, cwd=cwd,
                                start_new_session=True)
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc)
            out, err = proc.communicate()
        dead = dead_ranks(full_env[ENV_RANK_MAP], out + err) if proc.returncode else ()
    if dead:
        err += "".join(f"dualnn.distributed: rank {r} of {n} (pid {pid}) ended without an "
                       f"error report (killed by a signal?); the job was stopped\n"
                       for r, pid in dead)
    return JobResult(proc.returncode, out, err, time.monotonic() - started, timed_out,
                     tuple(r for r, _ in dead))


_BAD_TERMINATION = re.compile(r"BAD TERMINATION.*?PID (\d+) RUNNING AT (\S+)", re.DOTALL)


def dead_ranks(rank_map, output):
    """``[(rank, pid), ...]`` of the processes MPICH's launcher reported as killed in
    ``output``, looked up in the rank map the job's rank 0 wrote (``[]`` without one)."""
    try:
        with open(rank_map, encoding="utf-8") as fh:
            places = json.load(fh)
    except (OSError, ValueError):
        return []
    by_pid = {(entry["node"], entry["pid"]): entry["rank"] for entry in places}
    found = []
    for pid, node in _BAD_TERMINATION.findall(output):
        for (where, known), r in by_pid.items():
            if known == int(pid) and (where == node or where.split(".")[0] == node):
                found.append((r, int(pid)))
    return found


def run_streaming(args, n, env=None):
    """Like :func:`run`, but the job's output goes to this process's stdout and stderr
    as it comes (no timeout). Returns the exit status.

    A first Ctrl-C is passed on to every rank (``mpiexec`` forwards SIGINT; ``fit``
    then stops every rank after the same step); a second one kills the job.

    A rank that died without a report (killed by a signal) is named on stderr.
    """
    full_env = launcher_env()
    full_env.update(env or {})
    with tempfile.TemporaryDirectory(prefix="dualnn-job-") as scratch:
        full_env[ENV_RANK_MAP] = os.path.join(scratch, "ranks.json")
        proc = subprocess.Popen(command(args, n), stderr=subprocess.PIPE, text=True,
                                env=full_env, start_new_session=True)
        seen = []
        interrupted = False
        while True:
            try:
                for line in proc.stderr:
                    seen.append(line)
                    sys.stderr.write(line)
                    sys.stderr.flush()
                proc.wait()
                break
            except KeyboardInterrupt:
                if interrupted:
                    kill_group(proc)
                    raise
                interrupted = True
                proc.send_signal(signal.SIGINT)
        if proc.returncode:
            for r, pid in dead_ranks(full_env[ENV_RANK_MAP], "".join(seen)):
                sys.stderr.write(f"dualnn.distributed: rank {r} of {n} (pid {pid}) ended "
                                 "without an error report (killed by a signal?)\n")
    return proc.returncode


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
