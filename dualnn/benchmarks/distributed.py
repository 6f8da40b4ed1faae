"""Measure data-parallel training: all-reduce bandwidth and step throughput.

``python -m dualnn.benchmarks.distributed`` starts its own jobs and prints two tables:

1. all-reduce of a float32 buffer between 2 ranks, by message size: the time of one
   in-place reduction through :class:`MPICommunicator` (with the collective timeout, i.e.
   ``Iallreduce`` polled by ``Test()``; and without, the blocking ``Allreduce``), the
   *algorithm* bandwidth ``bytes / t`` and the *bus* bandwidth ``2 (N-1)/N * bytes / t``
   (what each rank sends and receives in a ring all-reduce; see the docs);
2. the training step of the 784-1024-1024-1024-10 MLP (ReLU, Adam, float32) with a global
   batch of 512: one process with 1 and with 2 threads (batch 512) against 2 ranks with
   1 thread each (batch 256 each, gradients averaged by :class:`DistributedOptimizer`).

Thread counts are set through ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and
``NUMBA_NUM_THREADS`` in each job's environment.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time

from .timing import time_calls

SIZES = (784, 1024, 1024, 1024, 10)
MESSAGE_BYTES = tuple(4 ** k * 1024 for k in range(8))  # 1 KiB .. 16 MiB


def _threads_env(n):
    n = str(n)
    return {"OMP_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "NUMBA_NUM_THREADS": n,
            "MKL_NUM_THREADS": n, "CI": "1"}


def _median_time(fn, repeats, warmup=2):
    return statistics.median(time_calls(fn, repeats, warmup))


# ------------------------------------------------------------------ workers (one rank each)
def worker_allreduce(budget):
    import numpy as np

    import dualnn.distributed as dist

    dist.init()
    comm = dist.runtime.communicator("cpu")
    rows = []
    for nbytes in MESSAGE_BYTES:
        buf = np.ones(nbytes // 4, dtype=np.float32)
        repeats = max(5, min(200, int(budget / max(nbytes / 1e9, 1e-5) / 200)))
        result = {"bytes": nbytes}
        for label, timeout in (("polled", 600.0), ("blocking", None)):
            comm.timeout = timeout
            comm.barrier()
            t = _median_time(lambda buf=buf: comm.allreduce_(buf), repeats)
            # every rank must agree on the figure: take the slowest rank's
            result[label] = max(comm.allgather(t))
        rows.append(result)
    if dist.rank() == 0:
        print(json.dumps({"allreduce": rows, "size": dist.size()}))


def worker_step(distributed, global_batch, steps):
    import numpy as np

    import dualnn as dn

    rank, size = 0, 1
    if distributed:
        import dualnn.distributed as dist
        rank, size, _ = dist.init()
    dn.seed(0)
    L = dn.layers
    layers = []
    for n_in, n_out in itertools.pairwise(SIZES[:-1]):
        layers += [L.Linear(n_in, n_out, init="he"), L.ReLU()]
    model = dn.Sequential(*layers, L.Linear(SIZES[-2], SIZES[-1]))
    opt = dn.optim.Adam(model.parameters(), lr=1e-3)
    if distributed:
        ctx = dist.current()
        ctx.broadcast_model(model, opt)
        opt = dist.DistributedOptimizer(opt)
    loss_fn = dn.losses.SoftmaxCrossEntropy()
    batch = global_batch // size
    rng = np.random.default_rng(rank)
    x = rng.standard_normal((batch, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], batch)

    def step():
        loss_fn.forward(model.forward(x, training=True), y)
        model.backward(loss_fn.backward())
        opt.step()
        opt.zero_grad()

    if distributed:
        ctx.barrier()
    t = _median_time(step, steps, warmup=3)
    if distributed:
        t = max(ctx.reduce_metrics({"t": t}, op="max")["t"], t)
    if rank == 0:
        print(json.dumps({"step_s": t, "samples_per_s": global_batch / t, "ranks": size,
                          "batch_per_rank": batch}))


# ------------------------------------------------------------------ driver
def _run_job(args, n, threads, timeout):
    from ..distributed.launch import run

    if n > 1:
        job = run(["-m", "dualnn.benchmarks.distributed", *args], n=n, timeout=timeout,
                  env=_threads_env(threads))
    else:
        import os
        import subprocess
        env = dict(os.environ, **_threads_env(threads))
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "dualnn.benchmarks.distributed", *args],
                              capture_output=True, text=True, env=env, timeout=timeout,
                              check=False)
        job = type("Job", (), {"returncode": proc.returncode, "stdout": proc.stdout,
                               "stderr": proc.stderr, "elapsed": time.monotonic() - started})
    if job.returncode != 0:
        raise RuntimeError(f"benchmark job {args} failed:\n{job.stderr[-3000:]}")
    return json.loads(job.stdout.strip().splitlines()[-1])


def report_allreduce(result, out=print):
    """Print the all-reduce table of a ``worker_allreduce`` result."""
    out(f"all-reduce, float32, {result['size']} ranks (MPICommunicator; median of repeats, slowest rank)")
    out(f"{'bytes':>10} {'polled us':>10} {'GB/s alg':>9} {'GB/s bus':>9} "
        f"{'blocking us':>12} {'GB/s alg':>9}")
    n = result["size"]
    for row in result["allreduce"]:
        b, tp, tb = row["bytes"], row["polled"], row["blocking"]
        out(f"{b:>10} {tp * 1e6:>10.1f} {b / tp / 1e9:>9.3f} "
            f"{2 * (n - 1) / n * b / tp / 1e9:>9.3f} {tb * 1e6:>12.1f} {b / tb / 1e9:>9.3f}")


def main(argv=None, out=print):
    parser = argparse.ArgumentParser(prog="python -m dualnn.benchmarks.distributed",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--batch", type=int, default=512, help="global batch")
    parser.add_argument("--budget", type=float, default=0.2,
                        help="rough seconds per all-reduce size")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per job")
    parser.add_argument("--workers", type=int, default=2,
                        help="ranks N: N ranks x 1 thread against 1 process x N threads "
                             "(default 2)")
    parser.add_argument("--skip-allreduce", action="store_true",
                        help="only the training-step comparison")
    parser.add_argument("--worker", choices=["allreduce", "step", "step-distributed"],
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error(f"--workers must be >= 2 (ranks to compare), got {args.workers}")
    n = args.workers
    if args.worker == "allreduce":
        return worker_allreduce(args.budget)
    if args.worker in ("step", "step-distributed"):
        return worker_step(args.worker == "step-distributed", args.batch, args.steps)

    result = None
    if not args.skip_allreduce:
        result = _run_job(["--worker", "allreduce", "--budget", str(args.budget)], n, 1,
                          args.timeout)
        report_allreduce(result, out)
    common = ["--steps", str(args.steps), "--batch", str(args.batch)]
    runs = {"1 process x 1 thread": _run_job(["--worker", "step", *common], 1, 1, args.timeout),
            f"1 process x {n} threads": _run_job(["--worker", "step", *common], 1, n,
                                                 args.timeout),
            f"{n} ranks x 1 thread": _run_job(["--worker", "step-distributed", *common], n, 1,
                                              args.timeout)}
    out(f"\nMLP {'-'.join(map(str, SIZES))} step, global batch {args.batch}, float32, Adam")
    out(f"{'setup':<28} {'step ms':>8} {'samples/s':>10}")
    for label, r in runs.items():
        out(f"{label:<28} {r['step_s'] * 1e3:>8.1f} {r['samples_per_s']:>10.0f}")
    return {"allreduce": result, "steps": runs}


if __name__ == "__main__":
    main()
