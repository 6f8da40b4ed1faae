"""Where a training step's time goes: each backend op timed inside the benchmark's step.

Run:  python tools/profile_step.py [--batch 512] [--steps 30]

Builds the step ``dualnn bench`` times (784-1024-1024-1024-10, Linear(bias=False) ->
BatchNorm -> ReLU, softmax cross-entropy, Adam, float32), wraps every op of the model's
backend with a timer, runs warm-up steps and then ``--steps`` timed ones, and prints each
op's share of the step (the rest is Python between the ops). Timing each op adds a
``perf_counter`` pair per call (~0.1 us), negligible at these sizes. Ops are timed where
they run in the step — right after a GEMM, on data the GEMM just left in the cache — which
is what a training step sees, unlike a tight loop over one array.
"""

from __future__ import annotations

import argparse
import collections
import time

import dualnn as dn  # noqa: F401  (first: thread policy before NumPy's BLAS starts)
from dualnn import bench

import numpy as np

OPS = ("matmul", "matmul_accumulate", "bias_activation_forward", "activation_forward",
       "activation_backward", "batchnorm_forward_train", "batchnorm_backward",
       "softmax_cross_entropy", "adam_update", "all_finite", "to_host", "item")


def instrument(backend, totals, counts):
    """Replace each op in ``OPS`` on ``backend`` (the instance) by a timed wrapper.

    Only the outermost op is charged (``matmul_accumulate`` calls ``matmul``).
    """
    depth = [0]
    for name in OPS:
        original = getattr(backend, name, None)
        if original is None:
            continue

        def timed(*args, _original=original, _name=name, **kwargs):
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                depth[0] -= 1
                if depth[0] == 0:
                    totals[_name] += elapsed
                    counts[_name] += 1

        setattr(backend, name, timed)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)

    sizes = (bench.IN_FEATURES, *bench.HIDDEN, bench.CLASSES)
    rng = np.random.default_rng(0)
    weights = bench.initial_weights(sizes, True, "float32", rng)
    x = rng.standard_normal((args.batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], args.batch)
    step = bench.DualnnStep(sizes, "float32", weights, x, y)
    totals, counts = collections.Counter(), collections.Counter()
    instrument(step.model.backend, totals, counts)
    gemm_bound = bench.GemmBound(sizes, "float32", weights, x)
    for _ in range(args.warmup):
        step()
        gemm_bound()
    totals.clear()
    counts.clear()
    wall = gemm_wall = 0.0
    for _ in range(args.steps):  # alternate, so a machine that slows down slows both
        t0 = time.perf_counter()
        step()
        t1 = time.perf_counter()
        gemm_bound()
        t2 = time.perf_counter()
        wall += t1 - t0
        gemm_wall += t2 - t1
    per_step = wall / args.steps
    print(f"batch {args.batch}: {per_step * 1e3:.2f} ms per step, "
          f"{args.batch / per_step:.0f} samples/s ({args.steps} steps); the same 11 GEMMs "
          f"alone (GEMM bound, alternated with the steps): {gemm_wall / args.steps * 1e3:.2f} "
          f"ms, dualnn/GEMM bound {gemm_wall / wall:.2f}")
    print(f"{'op':26s} {'calls/step':>10s} {'ms/step':>9s} {'share':>7s}")
    for name, total in totals.most_common():
        print(f"{name:26s} {counts[name] / args.steps:10.1f} {total / args.steps * 1e3:9.3f} "
              f"{total / wall:7.1%}")
    rest = wall - sum(totals.values())
    print(f"{'(python between ops)':26s} {'':10s} {rest / args.steps * 1e3:9.3f} "
          f"{rest / wall:7.1%}")


if __name__ == "__main__":
    main()
