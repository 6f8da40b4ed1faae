"""NumPy's BLAS against oneMKL on the CPU backend's GEMM shapes, side by side in one process.

Run:  python tools/compare_gemm_libraries.py [--rounds 7]

Needs the ``mkl`` extra. For each product (the MLP step's forward, last-layer and square
shapes, and the small ones around ``mkl_gemm.MIN_WORK``) and each dtype, times
``np.matmul(a, b, out=)`` and ``mkl_gemm.gemm(a, b, out=)`` alternately for ``--rounds``
rounds and prints the medians: microseconds per call, GFLOP/s and the ratio. The numbers
in the performance page ("oneMKL's GEMMs on the CPU") come from it.
"""

from __future__ import annotations

import argparse
import time

import dualnn  # noqa: F401  (first: the thread policy before NumPy's BLAS starts)
from dualnn.backend import mkl_gemm

import numpy as np

SHAPES = [(512, 1024, 1024), (4096, 1024, 1024), (512, 1024, 10), (256, 256, 256),
          (64, 64, 128), (128, 128, 128), (128, 256, 128)]


def time_pair(a, b, out, rounds):
    """Median seconds per call of NumPy's and oneMKL's product, alternated."""
    reps = max(3, int(1e9 / (2 * a.shape[0] * a.shape[1] * b.shape[1])))
    times = {"numpy": [], "mkl": []}
    calls = {"numpy": lambda: np.matmul(a, b, out=out),
             "mkl": lambda: mkl_gemm.gemm(a, b, out=out)}
    for fn in calls.values():
        fn()
    for _ in range(rounds):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            times[name].append((time.perf_counter() - t0) / reps)
    return float(np.median(times["numpy"])), float(np.median(times["mkl"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    ok, reason = mkl_gemm.availability()
    if not ok:
        print(f"oneMKL unavailable: {reason}")
        return 1
    rng = np.random.default_rng(0)
    print(f"{'dtype':<8} {'m x k x n':<18} {'numpy us':>10} {'mkl us':>10} "
          f"{'numpy GF/s':>11} {'mkl GF/s':>9} {'numpy/mkl':>10}")
    for dtype in (np.float32, np.float64):
        for m, k, n in SHAPES:
            a = rng.standard_normal((m, k)).astype(dtype)
            b = rng.standard_normal((k, n)).astype(dtype)
            out = np.empty((m, n), dtype)
            t_np, t_mkl = time_pair(a, b, out, args.rounds)
            flops = 2.0 * m * k * n
            print(f"{np.dtype(dtype).name:<8} {f'{m} x {k} x {n}':<18} {t_np * 1e6:>10.1f} "
                  f"{t_mkl * 1e6:>10.1f} {flops / t_np / 1e9:>11.0f} "
                  f"{flops / t_mkl / 1e9:>9.0f} {t_np / t_mkl:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
