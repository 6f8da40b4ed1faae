"""``dualnn bench --precision mixed_bfloat16``: bfloat16 GEMMs on the CPU against PyTorch.

The MLP training step of ``dualnn bench`` (784-1024x3-10, ``Linear(bias=False) ->
BatchNorm -> ReLU``, softmax cross-entropy, Adam, no input gradient on either side) is
timed side by side, contestants alternated within each round, every round repeated:

- dualnn float32 and dualnn ``mixed_bfloat16`` (the :class:`PrecisionRunner` of ``fit``:
  bfloat16 GEMMs through oneDNN or oneMKL when available, else the float32 emulation);
- PyTorch float32 eager and PyTorch under ``torch.autocast("cpu", dtype=torch.bfloat16)``
  (one worker process, :mod:`dualnn.benchmarks.torch_worker`);
- the step's 11 GEMMs alone, in float32 (NumPy) and in bfloat16 (operands
  converted beforehand): how much of the step is GEMM.

It prints samples/s (median and range over rounds) and the ratios. ``--accuracy`` also
trains the digits MLP and three runs of the large-batch experiment in float32 and
``mixed_bfloat16`` (fast path and, with ``DUALNN_BF16_GEMM=0``, the emulation) and
prints the test accuracies.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings

import numpy as np

import dualnn as dn

from .. import _threads
from ..backend import bf16_gemm
from ..precision import PerformanceWarning, Precision
from ..training.mixed_precision import PrecisionRunner
from .compare import (
    LOSS_CHECK_STEPS,
    DualnnStep,
    GemmBound,
    TorchWorker,
    step_data,
    torch_available,
)
from .timing import time_calls

SWITCH = "DUALNN_BF16_GEMM"
"""``DUALNN_BF16_GEMM=0`` turns the bfloat16 GEMM path off (the emulation runs)."""
LOSS_RTOL_BF16 = 3e-2
"""bfloat16 products differ from float32 in the 3rd digit; the losses of the first
steps of dualnn and PyTorch autocast agree within this."""


class MixedStep(DualnnStep):
    """dualnn's training step with ``mixed_bfloat16`` storage, as ``fit`` runs it."""

    def __init__(self, sizes, dtype, weights, x, y, fast=True):
        super().__init__(sizes, dtype, weights, x, y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PerformanceWarning)
            self.runner = PrecisionRunner(self.model, Precision("mixed_bfloat16"))
        if not fast:
            self.runner.gemms = None

    def __call__(self, x=None, y=None):
        x = self.x if x is None else x
        y = self.y if y is None else y
        loss = self.loss_fn.forward(self.runner.forward(x), y)
        self.runner.backward(self.loss_fn.backward())
        self.opt.step()
        self.opt.zero_grad()
        return loss


class Bf16GemmBound(GemmBound):
    """The step's 11 GEMMs in bfloat16 (:func:`bf16_gemm.gemm`), operands converted once
    beforehand."""

    def __init__(self, sizes, dtype, weights, x):
        super().__init__(sizes, dtype, weights, x)
        from ..kernels.cast.reference import bfloat16_bits

        GemmBound.__call__(self)  # real activations and gradients to convert
        self.bx = bfloat16_bits(np, self.x)
        self.bw = [bfloat16_bits(np, w) for w in self.w]
        self.bh = [bfloat16_bits(np, h) for h in self.h]
        self.bdy = bfloat16_bits(np, self.dy)
        self.bdh = [bfloat16_bits(np, h) for h in self.dh]

    def __call__(self):
        inputs = [self.bx] + self.bh[:-1]
        for a, w, out in zip(inputs, self.bw, self.h):
            bf16_gemm.gemm(a, w.T, out=out)
        grad = self.bdy
        for i in range(len(self.bw) - 1, -1, -1):
            bf16_gemm.gemm(grad.T, inputs[i], out=self.dw[i])
            if i > 0:
                bf16_gemm.gemm(grad, self.bw[i], out=self.dh[i - 1])
                grad = self.bdh[i - 1]


def _span(values):
    """(median, min, max)."""
    return float(np.median(values)), min(values), max(values)


def run_step(batch_sizes, repeats, steps, warmup, use_torch, out=print):
    """Time the contestants; returns ``{"batches": {b: {name: [samples/s per round]}}}``."""
    dtype = "float32"
    sizes, weights, data = step_data(batch_sizes, dtype)
    check_batch = min(batch_sizes)
    ok, reason = bf16_gemm.availability()
    gemm = bf16_gemm.info()
    out("bfloat16 GEMM: " + (f"{bf16_gemm.LIBRARY_NAMES[gemm['name']]} {gemm['library']}, "
                             f"{gemm['layer']} threading, "
                             f"{gemm['threads']} threads" if ok
                             else f"unavailable ({reason}); mixed_bfloat16 is emulated"))
    policy = _threads.thread_policy_report()
    out("dualnn thread policy: " + ", ".join(f"{k}={v}" for k, v in policy.items()))
    result = {"batches": {}, "bf16_gemm": gemm}
    worker = None
    tmp = tempfile.TemporaryDirectory(prefix="dualnn-bench-")
    try:
        if use_torch and torch_available():
            path = os.path.join(tmp.name, "bench.npz")
            np.savez(path, **data)
            worker = TorchWorker(path)
            info = worker.ask(cmd="info")
            out(f"PyTorch {info['torch']}, {info['threads']} threads (its own process)")
        elif use_torch:
            out("PyTorch is not installed: skipping it")

        ours = MixedStep(sizes, dtype, weights, None, None)
        losses = [float(ours(data["check_x"][i], data["check_y"][i]))
                  for i in range(LOSS_CHECK_STEPS)]
        result["dualnn_losses"] = losses
        out(f"first {LOSS_CHECK_STEPS} losses, batch {check_batch}:")
        out("  dualnn mixed_bfloat16  " + " ".join(f"{v:.5f}" for v in losses))
        if worker is not None:
            theirs = worker.ask(cmd="losses", autocast=True)["losses"]
            agree = bool(np.allclose(losses, theirs, rtol=LOSS_RTOL_BF16, atol=0))
            result.update(torch_losses=theirs, losses_agree=agree)
            out("  pytorch autocast bf16  " + " ".join(f"{v:.5f}" for v in theirs))
            out(f"  {'agree' if agree else 'DISAGREE'} (rtol {LOSS_RTOL_BF16:g})")

        for b in batch_sizes:
            x, y = data[f"x{b}"], data[f"y{b}"]
            contestants = {"dualnn float32": DualnnStep(sizes, dtype, weights, x, y),
                           "dualnn mixed_bfloat16": MixedStep(sizes, dtype, weights, x, y),
                           "gemms float32": GemmBound(sizes, dtype, weights, x)}
            if ok:
                contestants["gemms bfloat16"] = Bf16GemmBound(sizes, dtype, weights, x)
            rates = {name: [] for name in contestants}
            if worker is not None:
                rates.update({"pytorch float32": [], "pytorch autocast bf16": []})
            for _ in range(repeats):
                for name, fn in contestants.items():
                    rates[name].append(b / float(np.median(time_calls(fn, steps, warmup))))
                if worker is not None:
                    for name, autocast in (("pytorch float32", False),
                                           ("pytorch autocast bf16", True)):
                        times = worker.ask(cmd="time", batch=b, steps=steps, warmup=warmup,
                                           autocast=autocast)["times"]
                        rates[name].append(b / float(np.median(times)))
            result["batches"][b] = rates
        report(result, out)
        return result
    finally:
        if worker is not None:
            worker.close()
        tmp.cleanup()


BOUND = "bound: bf16 GEMMs + float32 rest"
"""A derived contestant: the bfloat16 GEMMs plus the float32 step's work outside its
GEMMs, per round (``t = t_gemms_bf16 + t_dualnn_f32 - t_gemms_f32``): the best a
``mixed_bfloat16`` step could do with this GEMM if every conversion were free."""


def bound_rates(rates):
    """Per-round samples/s of :data:`BOUND` (empty without the bfloat16 GEMM rows)."""
    names = ("gemms bfloat16", "dualnn float32", "gemms float32")
    if not all(rates.get(name) for name in names):
        return []
    out = []
    for bf16, f32, gemm32 in zip(*(rates[name] for name in names)):
        seconds = 1 / bf16 + max(0.0, 1 / f32 - 1 / gemm32)  # per sample
        out.append(1 / seconds)
    return out


RATIOS = [("dualnn mixed_bfloat16", "dualnn float32"),
          ("dualnn mixed_bfloat16", "pytorch float32"),
          ("dualnn mixed_bfloat16", "pytorch autocast bf16"),
          ("dualnn float32", "pytorch float32"),
          ("pytorch autocast bf16", "pytorch float32"),
          ("gemms bfloat16", "gemms float32"),
          (BOUND, "pytorch float32"),
          (BOUND, "pytorch autocast bf16")]


def report(result, out=print):
    """Print samples/s (median [min-max] over rounds) and the ratios (of medians; the
    range is over rounds, each contestant's round against the other's same round)."""
    for b, rates in result["batches"].items():
        bound = bound_rates(rates)
        if bound:
            rates = dict(rates, **{BOUND: bound})
        out("")
        out(f"batch {b}: samples/s, median [range] over {len(next(iter(rates.values())))} "
            "rounds")
        for name, values in rates.items():
            med, lo, hi = _span(values)
            out(f"  {name:<24} {med:>9.0f}  [{lo:.0f}-{hi:.0f}]")
        for a, c in RATIOS:
            if rates.get(a) and rates.get(c):
                per_round = [x / y for x, y in zip(rates[a], rates[c])]
                med, lo, hi = _span(per_round)
                out(f"  {a} / {c}: {med:.2f}x  [{lo:.2f}-{hi:.2f}]")


# ---------------------------------------------------------------------------------------
# Accuracy: digits and the large-batch experiment, float32 vs mixed_bfloat16
# ---------------------------------------------------------------------------------------

def _switched(fast):
    """Context: the bfloat16 GEMM path on (``fast``) or off (the emulation)."""
    import contextlib

    @contextlib.contextmanager
    def scope():
        old = os.environ.get(SWITCH)
        os.environ[SWITCH] = "1" if fast else "0"
        try:
            yield
        finally:
            if old is None:
                os.environ.pop(SWITCH, None)
            else:
                os.environ[SWITCH] = old
    return scope()


PRECISIONS = [("float32", "float32", True), ("mixed_bfloat16", "mixed_bfloat16", True),
              ("mixed_bfloat16 emulated", "mixed_bfloat16", False)]


def digits_accuracy(epochs=30, batch=64, seed=0):
    """Test accuracy of the digits MLP (64-128-128-10 BN+ReLU, Adam) per precision."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=seed, stratify=y)
    scaler = StandardScaler().fit(xtr)
    xtr, xte = scaler.transform(xtr).astype(np.float32), scaler.transform(xte).astype(np.float32)
    ytr, yte = ytr.astype(np.int64), yte.astype(np.int64)
    L = dn.layers
    accuracy = {}
    for label, precision, fast in PRECISIONS:
        dn.seed(seed)
        model = dn.Sequential(L.Linear(64, 128, bias=False), L.BatchNorm(128), L.ReLU(),
                              L.Linear(128, 128, bias=False), L.BatchNorm(128), L.ReLU(),
                              L.Linear(128, 10))
        opt = dn.optim.Adam(model.parameters(), lr=1e-3)
        with _switched(fast), warnings.catch_warnings():
            warnings.simplefilter("ignore", PerformanceWarning)
            dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, xtr, ytr, epochs=epochs,
                   batch_size=batch, progress=False, precision=precision)
        pred = np.argmax(dn.predict(model, xte), axis=1)
        accuracy[label] = float((pred == yte).mean())
    return accuracy


LARGE_BATCH_RUNS = ("baseline (batch 256)", "(b) 8192, linear scaling + warmup",
                    "(c) 8192, LAMB + warmup")


def large_batch_accuracy(epochs=10, names=LARGE_BATCH_RUNS, seed=0):
    """Test accuracy of runs of :mod:`dualnn.experiments.large_batch` per precision
    (its training loop, with the step's forward/backward through ``PrecisionRunner``)."""
    from ..experiments import large_batch as lb

    task = lb.make_task(seed=seed)
    configs = [c for c in lb.default_configs() if c.name in names]
    if len(configs) != len(names):
        raise RuntimeError(f"large-batch runs {names} not all among "
                           f"{[c.name for c in lb.default_configs()]}")
    accuracy = {}
    for config in configs:
        for label, precision, fast in PRECISIONS:
            with _switched(fast), warnings.catch_warnings():
                warnings.simplefilter("ignore", PerformanceWarning)
                acc = _train_large_batch(lb, config, task, epochs, precision, seed)
            accuracy[f"{config.name}, {label}"] = acc
    return accuracy


def _train_large_batch(lb, config, task, epochs, precision, seed):
    model = lb.make_model(task.features, task.classes, seed=seed)
    opt = lb._optimizer(config, model.parameters())
    loss_fn = dn.losses.SoftmaxCrossEntropy(check_labels=False)
    runner = None if precision == "float32" else PrecisionRunner(model, Precision(precision))
    backend = model.backend
    n = len(task.x_train)
    per_epoch = n // config.batch_size
    total = per_epoch * epochs
    warm = min(round(config.warmup_epochs * per_epoch), total - 1)
    rng = np.random.default_rng(seed + 1)
    step = 0
    for _ in range(epochs):
        order = rng.permutation(n)
        for b in range(per_epoch):
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            xb, yb = backend.asarray(task.x_train[idx]), backend.asarray(task.y_train[idx])
            opt.lr = lb.polynomial_decay(step, total, config.lr, warmup_steps=warm)
            if runner is None:
                loss_fn.forward(model.forward(xb, training=True), yb)
                model.backward(loss_fn.backward(), input_grad=False)
            else:
                loss_fn.forward(runner.forward(xb), yb)
                runner.backward(loss_fn.backward())
            opt.step()
            opt.zero_grad()
            step += 1
    return lb.accuracy(model, task.x_test, task.y_test)


def report_accuracy(accuracy, out=print):
    """Print accuracies with the difference to float32 (in points)."""
    base = {}
    for name, acc in accuracy.items():
        run, _, label = name.rpartition(", ")
        if label == "float32":
            base[run] = acc
    for name, acc in accuracy.items():
        run, _, label = name.rpartition(", ")
        diff = 100 * (acc - base[run]) if run in base and label != "float32" else None
        out(f"  {name:<40} {100 * acc:6.2f}%"
            + (f"  ({diff:+.2f} points vs float32)" if diff is not None else ""))


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

def build_parser(prog="dualnn bench --precision mixed_bfloat16"):
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=["mixed_bfloat16"], required=True)
    parser.add_argument("--batch-sizes", default="512,4096",
                        help="comma-separated batch sizes (default 512,4096)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--steps", type=int, default=5,
                        help="timed steps per round and contestant (default 5)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--accuracy", action="store_true",
                        help="also compare test accuracy (digits, large-batch runs)")
    parser.add_argument("--epochs", type=int, default=10,
                        help="epochs of the large-batch runs with --accuracy (default 10)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return parser


def main(argv=None, prog="dualnn bench --precision mixed_bfloat16"):
    """Entry point of ``dualnn bench --precision mixed_bfloat16``."""
    args = build_parser(prog).parse_args(argv)
    try:
        batches = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    except ValueError:
        print(f"--batch-sizes: expected integers, got {args.batch_sizes!r}", file=sys.stderr)
        return 2
    if args.repeats < 1 or args.steps < 1 or not batches or min(batches) < 2:
        print("--repeats and --steps must be >= 1, batch sizes >= 2", file=sys.stderr)
        return 2
    with dn.use_device("cpu"):
        result = run_step(batches, args.repeats, args.steps, args.warmup, not args.no_torch)
        if args.accuracy:
            acc = digits_accuracy()
            acc = {f"digits, {k}": v for k, v in acc.items()}
            acc.update(large_batch_accuracy(epochs=args.epochs))
            print("\ntest accuracy:")
            report_accuracy(acc)
            result["accuracy"] = acc
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
    return 0 if result.get("losses_agree", True) else 1


if __name__ == "__main__":
    sys.exit(main())
