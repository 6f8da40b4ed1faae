"""Side-by-side timings of the fused CPU kernels (quick script, not an asv suite).

Run:  /work/venv/bin/python tools/measure_cpu_kernels.py [--reps N]

1. ReLU backward on (4096, 1024) float32 (reads dy and z, writes dx: 48 MiB per call) in
   GB/s, against a 2-thread Numba copy moving the same number of bytes (24 MiB -> 24 MiB).
2. Batch-norm forward (train) + backward, fused vs the textbook NumPy formula (reference).
3. Adam over 2.9M float32 values, fused vs the reference NumPy chain.

4. Every elementwise kernel's bandwidth against a 2-thread copy moving the same bytes.
5. Adam over four arrays allocated by plain ``np.empty`` vs dualnn's 2 MiB-aligned
   allocation (:mod:`dualnn.backend.allocation`), by array size.
6. Serial vs parallel build of the kernels a step runs, each timed right after a GEMM (as
   in a training step) on (n, 1024) float32: the data behind the size thresholds at the
   top of :mod:`dualnn.kernels._numba`.

Arrays of sections 3-5 (and the copies they are compared with) are allocated as dualnn
allocates parameters, gradients and optimizer state (``NumpyBackend.empty``).
``import dualnn`` comes first so its thread policy (OPENBLAS_THREAD_TIMEOUT, OMP_WAIT_POLICY)
is in the environment before NumPy loads. Each timing is the median of ``--reps`` calls after
warm-up calls; a (4096, 1024) float32 array fits the last-level cache here, so these are
cache-resident figures (a training step streams from DRAM).
"""

from __future__ import annotations

import argparse
import time

import dualnn  # noqa: F401  (first: thread policy before numpy loads)
from dualnn.backend import NumpyBackend
from dualnn.backend.allocation import aligned_empty
from dualnn.kernels import cpu
from dualnn.kernels.activation.cpu import _KERNELS as _ACTIVATION_KERNELS
from dualnn.kernels.batchnorm.cpu import _KERNELS as _BATCHNORM_KERNELS
from dualnn.kernels.ops import RELU
from dualnn.kernels.optim.cpu import _KERNELS as _OPTIM_KERNELS
from dualnn.kernels.softmax_xent.cpu import _KERNELS as _SOFTMAX_KERNELS


def _family_kernel(name, size):
    """The serial (size 0) or parallel (size inf) build of kernel ``name``, any family."""
    for kernels in (_ACTIVATION_KERNELS, _BATCHNORM_KERNELS, _SOFTMAX_KERNELS, _OPTIM_KERNELS):
        if name in kernels.names:
            return kernels.get(name, size)
    raise KeyError(name)

import numpy as np


def median_time(fn, reps, warm=5):
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def paired_median_times(fn_a, fn_b, reps, warm=5):
    """Median times of two calls timed in alternation (a machine that slows down slows both)."""
    for _ in range(warm):
        fn_a()
        fn_b()
    times_a, times_b = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn_a()
        t1 = time.perf_counter()
        fn_b()
        t2 = time.perf_counter()
        times_a.append(t1 - t0)
        times_b.append(t2 - t1)
    return float(np.median(times_a)), float(np.median(times_b))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    reps = args.reps

    import numba

    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))

    @numba.njit(parallel=True, nogil=True)
    def parallel_copy(src, dst):
        for i in numba.prange(src.shape[0]):
            dst[i] = src[i]

    fused, unfused = NumpyBackend(fused=True), NumpyBackend(fused=False)
    rng = np.random.default_rng(0)

    # 1. ReLU backward vs a 2-thread copy of the same bytes.
    n, c = 4096, 1024
    z = rng.standard_normal((n, c), dtype=np.float32)
    dy = rng.standard_normal((n, c), dtype=np.float32)
    dx = np.empty_like(dy)
    nbytes = 3 * dy.nbytes
    t_relu = median_time(lambda: fused.activation_backward("relu", dy, z, out=dx), reps)
    buf = dy.copy()
    t_relu_inplace = median_time(lambda: fused.activation_backward("relu", buf, z, out=buf),
                                 reps)
    t_relu_ref = median_time(lambda: unfused.activation_backward("relu", dy, z, out=dx), reps)
    src = rng.standard_normal(nbytes // 2 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    parallel_copy(src, dst)
    t_copy = median_time(lambda: parallel_copy(src, dst), reps)
    gbs = lambda t: nbytes / t / 1e9  # noqa: E731
    print(f"\n[1] ReLU backward (4096, 1024) float32, {nbytes / 2**20:.0f} MiB moved per call")
    print(f"    fused          {t_relu * 1e3:7.3f} ms  {gbs(t_relu):6.1f} GB/s")
    print(f"    fused in place {t_relu_inplace * 1e3:7.3f} ms  {gbs(t_relu_inplace):6.1f} GB/s")
    print(f"    reference      {t_relu_ref * 1e3:7.3f} ms  {gbs(t_relu_ref):6.1f} GB/s")
    print(f"    2-thread copy  {t_copy * 1e3:7.3f} ms  {gbs(t_copy):6.1f} GB/s")
    print(f"    fused / copy bandwidth = {t_copy / t_relu:.2f}; "
          f"fused speed-up over reference = {t_relu_ref / t_relu:.2f}x")

    # 2. Batch norm forward (train) + backward.
    print("\n[2] batch norm forward(train)+backward, float32 (relu=False)")
    for shape in [(256, 1024), (4096, 1024)]:
        x = rng.standard_normal(shape, dtype=np.float32) + 3
        g = rng.standard_normal(shape, dtype=np.float32)
        gamma = np.ones(shape[1], np.float32)
        beta = np.zeros(shape[1], np.float32)
        rm, rv = np.zeros_like(gamma), np.ones_like(gamma)
        y = np.empty_like(x)

        def step(backend):
            _, mean, invstd = backend.batchnorm_forward_train(x, gamma, beta, rm, rv, 1e-5, 0.1,
                                                              out=y)
            backend.batchnorm_backward(g, x, gamma, beta, mean, invstd, out=y)

        t_f = median_time(lambda: step(fused), reps)
        t_r = median_time(lambda: step(unfused), reps)
        print(f"    {str(shape):13s} fused {t_f * 1e3:7.3f} ms   reference {t_r * 1e3:7.3f} ms"
              f"   speed-up {t_r / t_f:.2f}x")

    def filled(size, positive=False):
        """A dualnn-allocated float32 array of random values."""
        a = aligned_empty((size,), np.float32)
        a[...] = rng.standard_normal(size, dtype=np.float32)
        return np.abs(a, out=a) if positive else a

    # 3. Adam over 2.9M float32 values.
    size = 2_900_000
    p, grad = filled(size), filled(size)
    m, v = filled(size) * 0, filled(size) * 0
    t_a = median_time(lambda: fused.adam_update(p, grad, m, v, step=10, lr=1e-3), reps)
    t_ar = median_time(lambda: unfused.adam_update(p, grad, m, v, step=10, lr=1e-3), reps)
    print(f"\n[3] Adam, {size:,} float32 values: fused {t_a * 1e3:.3f} ms, "
          f"reference {t_ar * 1e3:.3f} ms, speed-up {t_ar / t_a:.2f}x "
          f"({5 * 4 * size / t_a / 1e9:.1f} GB/s fused, 5 streams)")

    # 4. Every elementwise kernel's bandwidth as a fraction of a 2-thread copy moving the
    #    same bytes (reads + writes), on (4096, 1024) float32.
    def copy_of(nbytes_moved):
        """A 2-thread copy moving ``nbytes_moved`` bytes (half read, half written)."""
        src = filled(nbytes_moved // 2 // 4)
        dst = filled(src.size)
        return lambda: parallel_copy(src, dst)

    b = rng.standard_normal(c, dtype=np.float32)
    zz = z.copy()
    pp, gg, mm, vv = filled(n * c), filled(n * c), filled(n * c), filled(n * c, True)
    cases = [
        ("relu backward, out=dy", 3, lambda: fused.activation_backward("relu", buf, z, out=buf)),
        ("sigmoid backward", 3, lambda: fused.activation_backward("sigmoid", dy, z, out=dx)),
        ("bias + relu forward, in place", 2,
         lambda: fused.bias_activation_forward(zz, b, "relu", out=zz)),
        ("bias + tanh forward, in place", 2,
         lambda: fused.bias_activation_forward(zz, b, "tanh", out=zz)),
        ("bias + sigmoid forward, in place", 2,
         lambda: fused.bias_activation_forward(zz, b, "sigmoid", out=zz)),
        ("elu forward", 2, lambda: fused.activation_forward("elu", z, 1.0, out=dx)),
        ("elu backward", 3, lambda: fused.activation_backward("elu", dy, z, 1.0, out=dx)),
        ("sgd momentum", 5, lambda: fused.sgd_update(pp, gg, mm, lr=1e-6, momentum=0.9)),
        ("adam", 7, lambda: fused.adam_update(pp, gg, mm, vv, step=10, lr=1e-6)),
    ]
    print("\n[4] elementwise kernels on 4M float32 values vs a 2-thread copy of the same bytes"
          " (timed in alternation)")
    for name, streams, fn in cases:
        moved = streams * n * c * 4
        t_k, t_c = paired_median_times(fn, copy_of(moved), reps)
        print(f"    {name:30s} {moved / t_k / 1e9:6.1f} GB/s   copy {moved / t_c / 1e9:6.1f} GB/s"
              f"   ratio {t_c / t_k:.2f}")

    # 5. Where arrays live: plain np.empty vs 2 MiB-aligned (huge-page eligible) arrays.
    print("\n[5] Adam GB/s (7 streams) by allocation, 3 alternating rounds each")
    for size in (802_816, 1 << 20, 1 << 22):
        rates = {"np.empty": [], "aligned": []}
        for _ in range(3):
            for label in rates:
                arrays = []
                for k in range(4):
                    a = np.empty(size, np.float32) if label == "np.empty" \
                        else aligned_empty((size,), np.float32)
                    a[...] = np.abs(rng.standard_normal(size, dtype=np.float32))
                    arrays.append(a)
                t = median_time(lambda: fused.adam_update(*arrays, step=10, lr=1e-6), reps)
                rates[label].append(7 * 4 * size / t / 1e9)
        print(f"    {size:>9,} values ({size * 4 / 2**20:4.1f} MiB each): "
              + "   ".join(f"{k} {float(np.median(v)):5.1f}" for k, v in rates.items()))

    # 6. Serial vs parallel builds, right after a GEMM.
    print("\n[6] serial vs parallel build right after a GEMM, (n, 1024) float32, ms")
    for rows in (64, 256, 512, 1024):
        c = 1024
        x6, w6, h6 = filled(rows * c).reshape(rows, c), filled(c * c).reshape(c, c), \
            filled(rows * c).reshape(rows, c)
        z6, dy6, out6 = (filled(rows * c).reshape(rows, c) for _ in range(3))
        b6, g6, be6 = filled(c), np.ones(c, np.float32), np.zeros(c, np.float32)
        rm6, rv6 = np.zeros(c, np.float32), np.ones(c, np.float32)
        mean6, inv6 = np.empty(c, np.float32), np.empty(c, np.float32)
        dg6, db6 = np.empty(c, np.float32), np.empty(c, np.float32)
        cases6 = {
            "relu backward (in place)": lambda k: k("activation_backward")(
                RELU, h6.reshape(-1), z6.reshape(-1), np.float32(0), h6.reshape(-1)),
            "bias + relu forward": lambda k: k("bias_activation_forward")(
                RELU, h6, b6, np.float32(0)),
            "batch-norm forward + relu": lambda k: k("batchnorm_forward_train")(
                h6, g6, be6, rm6, rv6, 1e-5, 0.1, True, out6, mean6, inv6, False),
            "batch-norm backward (in place)": lambda k: k("batchnorm_backward")(
                dy6, h6, g6, be6, mean6, inv6, True, dy6, dg6, db6, True),
        }
        cells = []
        for name, call in cases6.items():
            times = {0: [], 1: []}
            for rep in range(reps + 5):
                for build in (0, 1):
                    np.matmul(x6, w6, out=h6)
                    t0 = time.perf_counter()
                    call(lambda kname: _family_kernel(kname, np.inf if build else 0))
                    if rep >= 5:
                        times[build].append(time.perf_counter() - t0)
            cells.append(f"{name} {np.median(times[0]) * 1e3:.3f}/"
                         f"{np.median(times[1]) * 1e3:.3f}")
        print(f"    n={rows:<5d} (serial/parallel) " + "   ".join(cells))
    print(f"\nnumba {numba.__version__}, {numba.get_num_threads()} threads, threading layer "
          f"{numba.threading_layer()}, kernel cache {cpu.cache_dir()}")


if __name__ == "__main__":
    main()
