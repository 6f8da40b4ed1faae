"""Running the MPI worker scenarios: ``mpiexec -n 2 python -m mpi4py mpi_worker.py``."""

from __future__ import annotations

import os

import pytest

from dualnn.distributed import launch

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_worker.py")
JOB_TIMEOUT = 60.0

needs_mpi = pytest.mark.skipif(not launch.can_launch(),
                               reason='needs mpi4py and mpiexec: pip install -e ".[mpi]"')


def run_scenario(name, out_dir, env=None, n=2):
    """Run one worker scenario on ``n`` ranks (killed after JOB_TIMEOUT seconds).

    The fused kernels are off in the workers: compiling them in every rank would cost
    more than the rest of the suite, and the distributed code does not depend on them.
    """
    full_env = {"DUALNN_FUSED": "0", "DUALNN_DEVICE": "cpu", "CI": "1",
                "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    full_env.update(env or {})
    return launch.run([WORKER, name, str(out_dir)], n=n, timeout=JOB_TIMEOUT, env=full_env,
                      cwd=str(out_dir))
