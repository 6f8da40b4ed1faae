"""Data-parallel training on 2 MPI ranks: all-reduce bandwidth by message size, and the
MLP step of 2 ranks x 1 thread against 1 process x 2 threads (same global batch).

Each figure comes from one ``mpiexec`` job started in ``setup_cache`` (the jobs time
themselves with the slowest rank's median), so asv's own timer is not used. Skipped
("n/a") where mpi4py or ``mpiexec`` is missing.
"""

from __future__ import annotations

from dualnn.benchmarks import distributed as bench

SIZES = list(bench.MESSAGE_BYTES)


def _require_mpi():
    from dualnn.distributed import _mpi

    if not _mpi.mpi4py_available() or _mpi.find_mpiexec() is None:
        raise NotImplementedError("needs mpi4py and mpiexec (pip install -e '.[mpi]')")


class AllReduce:
    """Algorithm bandwidth of an in-place float32 all-reduce between 2 ranks."""

    params = [SIZES]
    param_names = ["bytes"]
    unit = "GB/s"
    timeout = 600

    def setup_cache(self):
        _require_mpi()
        result = bench._run_job(["--worker", "allreduce", "--budget", "0.05"], n=2,
                                threads=1, timeout=540)
        return {row["bytes"]: row["blocking"] for row in result["allreduce"]}

    def track_allreduce_gbps(self, seconds_by_size, nbytes):
        return nbytes / seconds_by_size[nbytes] / 1e9


class DataParallelStep:
    """Samples/s of the 784-1024x3-10 MLP step, global batch 512: 2 ranks vs 2 threads."""

    params = [["2 ranks x 1 thread", "1 process x 2 threads"]]
    param_names = ["layout"]
    unit = "samples/s"
    timeout = 900

    def setup_cache(self):
        _require_mpi()
        ranks = bench._run_job(["--worker", "step-distributed", "--steps", "5"], n=2,
                               threads=1, timeout=840)
        threads = bench._run_job(["--worker", "step", "--steps", "5"], n=1, threads=2,
                                 timeout=840)
        return {"2 ranks x 1 thread": ranks["samples_per_s"],
                "1 process x 2 threads": threads["samples_per_s"]}

    def track_samples_per_s(self, results, layout):
        return results[layout]
