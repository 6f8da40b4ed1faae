"""Which oneMKL threading layer the bfloat16 GEMM should use (``python -m
dualnn.benchmarks.mkl_layers``).

For each layer (sequential, gnu, intel, tbb) and import order (dualnn first; numpy +
torch first) a fresh process times, at the MLP step's shapes:

- the bfloat16 GEMM alone (ms, median);
- a fused Numba kernel (bias + ReLU on the GEMM's output) started right after a GEMM, as
  in a training step (ms, median): slow when the GEMM's idle workers hold a core;
- the CPU time the process burns while sleeping 50 ms right after a GEMM (% of a core):
  idle workers that spin.

Prints one line per (order, layer) and the medians over ``--repeats`` rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, os, sys, time
if {torch_first}:
    import numpy, torch
import numpy as np
import dualnn as dn
from dualnn.backend import bf16_gemm
from dualnn.kernels import cpu
ok, reason = bf16_gemm.availability()
if not ok:
    print(json.dumps({{"error": reason}})); sys.exit(0)
n, k, m = {batch}, 1024, 1024
rng = np.random.default_rng(0)
a = (rng.standard_normal((n, k)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
w = (rng.standard_normal((m, k)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
out = np.empty((n, m), np.float32)
bias = np.zeros(m, np.float32)
for _ in range(3):
    bf16_gemm.gemm(a, w.T, out=out)
    cpu.bias_activation_forward(out, bias, "relu", 0.0, out=out)
gemm_t, kern_t, burn = [], [], []
for _ in range({reps}):
    t0 = time.perf_counter(); bf16_gemm.gemm(a, w.T, out=out); t1 = time.perf_counter()
    cpu.bias_activation_forward(out, bias, "relu", 0.0, out=out); t2 = time.perf_counter()
    gemm_t.append(t1 - t0); kern_t.append(t2 - t1)
for _ in range(5):
    bf16_gemm.gemm(a, w.T, out=out)
    c0 = time.process_time(); w0 = time.perf_counter(); time.sleep(0.05)
    burn.append((time.process_time() - c0) / (time.perf_counter() - w0))
med = lambda v: sorted(v)[len(v) // 2]
print(json.dumps({{"gemm_ms": 1e3 * med(gemm_t), "kernel_ms": 1e3 * med(kern_t),
                  "idle_burn": med(burn), "threads": bf16_gemm.info()["threads"]}}))
"""


def run(layer, torch_first, batch, reps):
    env = dict(os.environ, DUALNN_THREAD_POLICY=f"mkl_layer={layer}", DUALNN_BF16_LIBRARY="mkl")
    code = CHILD.format(torch_first=torch_first, batch=batch, reps=reps)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=600, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(lines[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dualnn.benchmarks.mkl_layers")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--reps", type=int, default=15, help="GEMMs per process")
    args = parser.parse_args(argv)
    from dualnn._threads import MKL_LAYERS

    rows = {}
    for _ in range(args.repeats):
        for torch_first in (False, True):
            for layer in MKL_LAYERS:
                r = run(layer, torch_first, args.batch, args.reps)
                key = ("numpy+torch first" if torch_first else "dualnn first", layer)
                rows.setdefault(key, []).append(r)
                print(key, r, flush=True)
    print(f"\n{'order':<18} {'layer':<11} {'gemm ms':>16} {'kernel ms':>16} {'idle burn':>14}")
    for (order, layer), results in rows.items():
        good = [r for r in results if "error" not in r]
        if not good:
            print(f"{order:<18} {layer:<11} {results[0]['error']}")
            continue

        def span(key, scale=1.0, good=good):
            v = sorted(r[key] * scale for r in good)
            return f"{v[0]:.2f}-{v[-1]:.2f}"
        print(f"{order:<18} {layer:<11} {span('gemm_ms'):>16} {span('kernel_ms'):>16} "
              f"{span('idle_burn', 100):>13}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
