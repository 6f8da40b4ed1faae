"""Batch norm and Adam, dualnn's fused kernels against PyTorch's CPU ops, side by side.

Run:  python tools/compare_kernels_torch.py [--reps N] [--rounds R]

Each library runs in its own subprocess (dualnn's OMP_WAIT_POLICY=PASSIVE slows torch when
they share one), alternating for ``--rounds`` rounds; the figures are medians of per-call
medians, and the ratios are taken between numbers measured in the same run.

- Batch norm: training forward + backward on (4096, 1024) float32; dualnn through its
  backend ops, torch through ``torch.nn.functional.batch_norm`` with autograd; also the
  textbook NumPy formula (dualnn's reference, fused kernels off).
- Adam: one step over the parameters of the 784-1024-1024-1024-10 MLP (2.9M values):
  ``dualnn.optim.Adam`` (fused), the NumPy chain (fused off), ``torch.optim.Adam()``
  with its defaults.
- Activations: forward and backward of ReLU, sigmoid, tanh and ELU on (4096, 1024) float32,
  dualnn's backend ops (out of place) against ``torch.<act>(z)`` and its autograd backward.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

ACTIVATIONS = ("relu", "sigmoid", "tanh", "elu")
SHAPES = [(1024, 784), (1024,), (1024,), (1024, 1024), (1024,), (1024,), (1024, 1024),
          (1024,), (1024,), (10, 1024), (10,)]


def _median_time(fn, reps):
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_dualnn(reps):
    import dualnn as dn
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4096, 1024)).astype(np.float32)
    dy = rng.standard_normal((4096, 1024)).astype(np.float32)
    out = {}
    for fused in (True, False):
        b = dn.backend.NumpyBackend(fused=fused)
        gamma, beta = np.ones(1024, np.float32), np.zeros(1024, np.float32)
        rm, rv = np.zeros(1024, np.float32), np.ones(1024, np.float32)
        y = np.empty_like(x)
        dx = np.empty_like(x)

        def bn():
            _, mean, invstd = b.batchnorm_forward_train(x, gamma, beta, rm, rv, 1e-5, 0.1,
                                                        out=y)
            b.batchnorm_backward(dy, x, gamma, beta, mean, invstd, out=dx)

        out[f"bn_{'fused' if fused else 'numpy'}"] = _median_time(bn, reps)
        params = []
        for i, shape in enumerate(SHAPES):
            # values placed as dualnn's layers place theirs (Linear stores its weight so)
            p = dn.Parameter(b.store(rng.standard_normal(shape), "float32"), b, f"p{i}")
            p.grad[...] = rng.standard_normal(shape)
            params.append(p)
        opt = dn.optim.Adam(params, lr=1e-3)
        out[f"adam_{'fused' if fused else 'numpy'}"] = _median_time(opt.step, reps)
    b = dn.backend.NumpyBackend(fused=True)
    y, dx = b.empty(x.shape, "float32"), b.empty(x.shape, "float32")
    for kind in ACTIVATIONS:
        saved = y if kind in ("sigmoid", "tanh") else x
        out[f"{kind}_fwd_fused"] = _median_time(
            lambda: b.activation_forward(kind, x, 1.0, out=y), reps)
        out[f"{kind}_bwd_fused"] = _median_time(
            lambda: b.activation_backward(kind, dy, saved, 1.0, out=dx), reps)
    return out


def run_torch(reps):
    import torch

    torch.manual_seed(0)
    x = torch.randn(4096, 1024, requires_grad=True)
    dy = torch.randn(4096, 1024)
    w, bias = torch.ones(1024, requires_grad=True), torch.zeros(1024, requires_grad=True)
    rm, rv = torch.zeros(1024), torch.ones(1024)

    def bn():
        y = torch.nn.functional.batch_norm(x, rm, rv, w, bias, training=True)
        y.backward(dy)

    out = {"bn_torch": _median_time(bn, reps)}
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in SHAPES]
    for p in params:
        p.grad = torch.randn(p.shape)
    opt = torch.optim.Adam(params, lr=1e-3)
    out["adam_torch"] = _median_time(opt.step, reps)
    z = x.detach()
    functions = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
                 "elu": torch.nn.functional.elu}
    for kind, fn in functions.items():
        out[f"{kind}_fwd_torch"] = _median_time(lambda: fn(z), reps)
        zz = z.clone().requires_grad_(True)
        yy = fn(zz)
        out[f"{kind}_bwd_torch"] = _median_time(
            lambda: torch.autograd.grad(yy, zz, dy, retain_graph=True), reps)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", choices=["dualnn", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = (run_dualnn if args.worker == "dualnn" else run_torch)(args.reps)
        print(json.dumps(result))
        return 0
    results = {}
    for _ in range(args.rounds):
        for worker in ("dualnn", "torch"):
            proc = subprocess.run([sys.executable, __file__, "--worker", worker, "--reps",
                                   str(args.reps)], capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{worker} worker failed:\n{proc.stderr}", file=sys.stderr)
                if worker == "torch":
                    continue
                return 1
            for key, value in json.loads(proc.stdout.strip().splitlines()[-1]).items():
                results.setdefault(key, []).append(value)
    med = {k: statistics.median(v) for k, v in results.items()}
    for key in sorted(med):
        print(f"{key:<12} {med[key] * 1e3:8.2f} ms")
    if "bn_torch" in med:
        print(f"batch norm fwd+bwd (4096, 1024): fused vs torch {med['bn_torch'] / med['bn_fused']:.2f}x, "
              f"vs NumPy formula {med['bn_numpy'] / med['bn_fused']:.2f}x")
        print(f"Adam over 2.9M values: fused vs torch default {med['adam_torch'] / med['adam_fused']:.2f}x, "
              f"vs NumPy chain {med['adam_numpy'] / med['adam_fused']:.2f}x")
        for kind in ACTIVATIONS:
            print(f"{kind:8s} (4096, 1024) speed vs torch: forward "
                  f"{med[f'{kind}_fwd_torch'] / med[f'{kind}_fwd_fused']:.2f}x, backward "
                  f"{med[f'{kind}_bwd_torch'] / med[f'{kind}_bwd_fused']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
