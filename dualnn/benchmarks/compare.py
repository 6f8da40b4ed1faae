"""Compare a dualnn training step with PyTorch eager and with its GEMM-only lower bound.

Run ``dualnn bench`` (or ``python -m dualnn.benchmarks``). In one process, interleaved and
repeated, it times the same MLP training step — 784-1024-1024-1024-10,
``Linear(bias=False) -> BatchNorm -> ReLU`` blocks, softmax cross-entropy, Adam — in

- dualnn (this process),
- PyTorch eager on the CPU (optional; in a worker subprocess, because the
  ``OMP_WAIT_POLICY=PASSIVE`` dualnn sets slows torch when both share a process; the worker
  gets the same initial weights and data through a temporary ``.npz``),
- the GEMM-only lower bound: just the step's 11 NumPy matmuls (4 forward, 4 weight
  gradients, 3 input gradients), which no implementation built on the same BLAS can beat,

and prints throughput (samples/s, medians over repeats) with the ratios dualnn/PyTorch and
dualnn/GEMM-bound. It also checks that the first 5 losses of dualnn and torch agree (same
initial weights and batches).

``--digits`` instead compares a small-batch fit on scikit-learn's digits (64-128-128-10 ReLU,
Adam, batch 64, 30 epochs): wall time and test accuracy for dualnn, PyTorch eager running
the same loop, and scikit-learn's ``MLPClassifier`` as a reference.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

import dualnn as dn

from .. import _threads
from .timing import time_calls

HIDDEN = (1024, 1024, 1024)
IN_FEATURES = 784
CLASSES = 10
LOSS_CHECK_STEPS = 5
LOSS_RTOL = 1e-4
WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_worker.py")
"""Run by path, so the worker never imports dualnn (see its module docstring)."""



def torch_available():
    """True when PyTorch can be imported (checked without importing it here)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


class TorchWorker:
    """A PyTorch subprocess (:mod:`dualnn.benchmarks.torch_worker`) answering JSON commands."""

    def __init__(self, npz_path):
        env = dict(os.environ)
        for name in _threads._applied:  # the thread policy dualnn set for itself, not the user
            env.pop(name, None)
        self.proc = subprocess.Popen(
            [sys.executable, WORKER_SCRIPT, npz_path], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the PyTorch worker exited unexpectedly (see its stderr above)")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"PyTorch worker: {reply['error']}")
        return reply

    def close(self):
        if self.proc.poll() is None:
            try:
                self.ask(cmd="quit")
            except (OSError, RuntimeError, ValueError):
                pass  # already gone: nothing to stop
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


# ---------------------------------------------------------------------------------------
# Models and weights shared by all three contestants
# ---------------------------------------------------------------------------------------

def initial_weights(sizes, batchnorm, dtype, rng):
    """Host arrays in ``torch.nn.Sequential(...).parameters()`` order (= dualnn's order).

    He-normal weights ``(out, in)``; batch-norm gamma 1, beta 0; the last layer's bias 0.
    """
    weights = []
    for n_in, n_out in itertools.pairwise(sizes[:-1]):
        weights.append((rng.standard_normal((n_out, n_in)) * np.sqrt(2.0 / n_in)).astype(dtype))
        if batchnorm:
            weights += [np.ones(n_out, dtype), np.zeros(n_out, dtype)]
        else:
            weights.append(np.zeros(n_out, dtype))
    n_in, n_out = sizes[-2], sizes[-1]
    weights.append((rng.standard_normal((n_out, n_in)) * np.sqrt(1.0 / n_in)).astype(dtype))
    weights.append(np.zeros(n_out, dtype))
    return weights


def dualnn_model(sizes, batchnorm, dtype, weights):
    """The dualnn twin of the worker's model, loaded with ``weights``."""
    L = dn.layers
    layers = []
    for n_in, n_out in itertools.pairwise(sizes[:-1]):
        layers.append(L.Linear(n_in, n_out, bias=not batchnorm, dtype=dtype))
        if batchnorm:
            layers.append(L.BatchNorm(n_out, dtype=dtype))
        layers.append(L.ReLU())
    layers.append(L.Linear(sizes[-2], sizes[-1], dtype=dtype))
    model = dn.Sequential(*layers)
    params = model.parameters()
    if len(params) != len(weights):
        raise RuntimeError(f"expected {len(weights)} parameters, the model has {len(params)}")
    for p, w in zip(params, weights):
        if tuple(p.data.shape) != w.shape:
            raise RuntimeError(f"parameter {p.name}: shape {tuple(p.data.shape)} != {w.shape}")
        p.data[...] = model.backend.asarray(w)
    return model


class DualnnStep:
    """dualnn's training step on a fixed batch."""

    def __init__(self, sizes, dtype, weights, x, y):
        self.model = dualnn_model(sizes, True, dtype, weights)
        self.loss_fn = dn.losses.SoftmaxCrossEntropy()
        self.opt = dn.optim.Adam(self.model.parameters(), lr=1e-3)
        self.x, self.y = x, y

    def __call__(self, x=None, y=None):
        x = self.x if x is None else x
        y = self.y if y is None else y
        loss = self.loss_fn.forward(self.model.forward(x, training=True), y)
        self.model.backward(self.loss_fn.backward(), input_grad=False)
        self.opt.step()
        self.opt.zero_grad()
        return loss


class GemmBound:
    """Only the step's 11 matmuls, into preallocated outputs, through the backend's
    ``matmul`` (the lower bound of the GEMM library dualnn uses: oneMKL or NumPy's BLAS)."""

    def __init__(self, sizes, dtype, weights, x):
        from ..backend import NumpyBackend

        self.matmul = NumpyBackend().matmul
        self.x = x
        n = x.shape[0]
        self.w = [w for w in weights if w.ndim == 2]
        self.h = [np.empty((n, s), dtype) for s in sizes[1:]]  # layer outputs
        self.dh = [np.empty((n, s), dtype) for s in sizes[1:-1]]  # input gradients
        self.dw = [np.empty_like(w) for w in self.w]
        self.dy = np.asarray(np.random.default_rng(1).standard_normal((n, sizes[-1])), dtype)

    def __call__(self):
        inputs = [self.x] + self.h[:-1]
        for a, w, out in zip(inputs, self.w, self.h):  # 4 forward GEMMs
            self.matmul(a, w.T, out=out)
        grad = self.dy
        for i in range(len(self.w) - 1, -1, -1):
            self.matmul(grad.T, inputs[i], out=self.dw[i])  # 4 weight gradients
            if i > 0:
                self.matmul(grad, self.w[i], out=self.dh[i - 1])  # 3 input gradients
                grad = self.dh[i - 1]


# ---------------------------------------------------------------------------------------
# The MLP step comparison
# ---------------------------------------------------------------------------------------

def gemm_library():
    """Which library runs the CPU backend's large float GEMMs, as a phrase."""
    from ..backend import mkl, mkl_gemm

    use, why = mkl_gemm.wanted()
    if not use:
        return f"NumPy's BLAS ({why})"
    ok, reason = mkl_gemm.availability()
    if not ok:
        return f"NumPy's BLAS; {reason}: about 1.1-1.2x faster GEMMs on Intel CPUs"
    info = mkl.info()
    return f"oneMKL ({info['layer']} threading layer, {info['threads']} threads)"


def step_data(batch_sizes, dtype, seed=0):
    """The MLP step's ``(sizes, weights, data)``: initial weights (BatchNorm model), the
    batches of the loss check (at the smallest batch size) and one batch per size, as the
    dict the PyTorch worker loads (``w{i}``, ``sizes``, ``dtype``, ``check_x/y``,
    ``x{b}/y{b}``)."""
    sizes = (IN_FEATURES,) + HIDDEN + (CLASSES,)
    rng = np.random.default_rng(seed)
    weights = initial_weights(sizes, True, dtype, rng)
    data = {f"w{i}": w for i, w in enumerate(weights)}
    data["sizes"] = np.array(sizes)
    data["dtype"] = np.array(dtype)
    check_batch = min(batch_sizes)
    data["check_x"] = rng.standard_normal(
        (LOSS_CHECK_STEPS, check_batch, IN_FEATURES)).astype(dtype)
    data["check_y"] = rng.integers(0, CLASSES, (LOSS_CHECK_STEPS, check_batch))
    for b in batch_sizes:
        data[f"x{b}"] = rng.standard_normal((b, IN_FEATURES)).astype(dtype)
        data[f"y{b}"] = rng.integers(0, CLASSES, b)
    return sizes, weights, data


def run_step_comparison(batch_sizes, repeats, steps, dtype, use_torch, warmup=2, seed=0,
                        out=print):
    """Interleaved timing of dualnn, torch and the GEMM bound; returns a result dict."""
    sizes, weights, data = step_data(batch_sizes, dtype, seed)
    check_batch = min(batch_sizes)

    worker = None
    tmp = tempfile.TemporaryDirectory(prefix="dualnn-bench-")
    try:
        if use_torch:
            if torch_available():
                path = os.path.join(tmp.name, "bench.npz")
                np.savez(path, **data)
                worker = TorchWorker(path)
                info = worker.ask(cmd="info")
                out(f"PyTorch {info['torch']} eager, {info['threads']} threads "
                    "(separate process, its own thread settings)")
            else:
                out("PyTorch is not installed: skipping the PyTorch comparison "
                    "(pip install 'dualnn[compare]')")
        policy = _threads.thread_policy_report()
        out("dualnn thread policy: " + ", ".join(f"{k}={v}" for k, v in policy.items()))
        out("dualnn float GEMMs: " + gemm_library())
        out(f"model {'-'.join(map(str, sizes))}, Linear(bias=False)->BatchNorm->ReLU, "
            f"softmax cross-entropy, Adam, {dtype}")

        result = {"sizes": sizes, "dtype": dtype, "batches": {}}

        # -- loss agreement
        ours = DualnnStep(sizes, dtype, weights, None, None)
        dn_losses = [float(ours(data["check_x"][i], data["check_y"][i]))
                     for i in range(LOSS_CHECK_STEPS)]
        result["dualnn_losses"] = dn_losses
        if worker is not None:
            torch_losses = worker.ask(cmd="losses")["losses"]
            diff = float(np.max(np.abs(np.subtract(dn_losses, torch_losses))))
            ok = bool(np.allclose(dn_losses, torch_losses, rtol=LOSS_RTOL if dtype == "float32"
                                  else 1e-8, atol=0))
            result.update(torch_losses=torch_losses, loss_max_abs_diff=diff, losses_agree=ok)
            out(f"first {LOSS_CHECK_STEPS} losses (batch {check_batch}):")
            out("  dualnn  " + " ".join(f"{v:.6f}" for v in dn_losses))
            out("  pytorch " + " ".join(f"{v:.6f}" for v in torch_losses))
            out(f"  max abs diff {diff:.2e}: " + ("agree" if ok else "DISAGREE")
                + f" (rtol {LOSS_RTOL:g})")

        # -- interleaved timing
        for b in batch_sizes:
            ours = DualnnStep(sizes, dtype, weights, data[f"x{b}"], data[f"y{b}"])
            gemm = GemmBound(sizes, dtype, weights, data[f"x{b}"])
            med = {"dualnn": [], "gemm": [], "pytorch": []}
            for _ in range(repeats):
                med["dualnn"].append(np.median(time_calls(ours, steps, warmup)))
                med["gemm"].append(np.median(time_calls(gemm, steps, warmup)))
                if worker is not None:
                    times = worker.ask(cmd="time", batch=b, steps=steps, warmup=warmup)["times"]
                    med["pytorch"].append(np.median(times))
            rates = {k: b / float(np.median(v)) for k, v in med.items() if v}
            result["batches"][b] = rates
        report_step_table(result, out)
        return result
    finally:
        if worker is not None:
            worker.close()
        tmp.cleanup()


def report_step_table(result, out=print):
    out("")
    out(f"{'batch':>6} {'dualnn':>12} {'pytorch':>12} {'gemm bound':>12} "
        f"{'dualnn/torch':>13} {'dualnn/gemm':>12}   (samples/s, medians)")
    for b, r in result["batches"].items():
        torch_rate = r.get("pytorch")
        cells = [f"{b:>6}", f"{r['dualnn']:>12.0f}",
                 f"{torch_rate:>12.0f}" if torch_rate else f"{'-':>12}", f"{r['gemm']:>12.0f}",
                 f"{r['dualnn'] / torch_rate:>13.2f}" if torch_rate else f"{'-':>13}",
                 f"{r['dualnn'] / r['gemm']:>12.2f}"]
        out(" ".join(cells))


# ---------------------------------------------------------------------------------------
# The digits comparison (small batches)
# ---------------------------------------------------------------------------------------

def run_digits(use_torch, epochs=30, batch=64, dtype="float32", seed=0, out=print):
    """dualnn vs PyTorch eager vs sklearn on digits; returns a result dict."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from sklearn.neural_network import MLPClassifier
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        out("--digits needs scikit-learn: pip install 'dualnn[datasets]'")
        return None
    import warnings

    X, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=seed, stratify=y)
    scaler = StandardScaler().fit(xtr)
    xtr = scaler.transform(xtr).astype(dtype)
    xte = scaler.transform(xte).astype(dtype)
    ytr, yte = ytr.astype(np.int64), yte.astype(np.int64)
    sizes = (64, 128, 128, 10)
    rng = np.random.default_rng(seed)
    weights = initial_weights(sizes, False, dtype, rng)
    perms = np.stack([rng.permutation(len(xtr)) for _ in range(epochs)])
    out(f"digits: {len(xtr)} train / {len(xte)} test, {'-'.join(map(str, sizes))} ReLU, Adam "
        f"lr 1e-3, batch {batch}, {epochs} epochs, {dtype}; same weights and batch order")
    result = {}

    # dualnn, the explicit loop (the same loop the torch worker runs). A throwaway model
    # runs a few steps first, so Numba's first-use cost (loading or compiling the kernels,
    # measured by the asv suite) stays out of the timing, as torch's does in its worker.
    loss_fn = dn.losses.SoftmaxCrossEntropy()

    def train(model, epochs_perms):
        opt = dn.optim.Adam(model.parameters(), lr=1e-3)
        for perm in epochs_perms:
            for start in range(0, len(perm), batch):
                idx = perm[start:start + batch]
                loss_fn.forward(model.forward(xtr[idx], training=True), ytr[idx])
                model.backward(loss_fn.backward(), input_grad=False)
                opt.step()
                opt.zero_grad()

    warm = dualnn_model(sizes, False, dtype, weights)
    train(warm, [np.arange(5 * batch)])
    np.argmax(warm.forward(xte, training=False), axis=1)
    model = dualnn_model(sizes, False, dtype, weights)
    (seconds,) = time_calls(lambda: train(model, perms))
    pred = np.argmax(model.forward(xte, training=False), axis=1)
    result["dualnn"] = {"seconds": seconds, "accuracy": float((pred == yte).mean())}

    # dualnn through dn.fit (the user-facing loop: shuffling, batching, bookkeeping)
    if hasattr(dn, "fit"):
        dn.seed(seed)
        model = dualnn_model(sizes, False, dtype, weights)
        fit_opt = dn.optim.Adam(model.parameters(), lr=1e-3)
        (seconds,) = time_calls(lambda: dn.fit(model, loss_fn, fit_opt, xtr, ytr, epochs=epochs,
                                               batch_size=batch, shuffle=True, progress=False))
        pred = np.argmax(dn.predict(model, xte), axis=1)
        result["dualnn dn.fit"] = {"seconds": seconds, "accuracy": float((pred == yte).mean())}

    if use_torch:
        if torch_available():
            with tempfile.TemporaryDirectory(prefix="dualnn-bench-") as tmp:
                path = os.path.join(tmp, "digits.npz")
                data = {f"d{i}": w for i, w in enumerate(weights)}
                np.savez(path, dtype=np.array(dtype), digits_sizes=np.array(sizes), xtr=xtr,
                         ytr=ytr, xte=xte, yte=yte, perms=perms, digits_batch=np.array(batch),
                         **data)
                worker = TorchWorker(path)
                try:
                    info = worker.ask(cmd="info")
                    result[f"pytorch {info['torch']}"] = worker.ask(cmd="digits")
                finally:
                    worker.close()
        else:
            out("PyTorch is not installed: skipping it (pip install 'dualnn[compare]')")

    clf = MLPClassifier(hidden_layer_sizes=sizes[1:-1], solver="adam", learning_rate_init=1e-3,
                        batch_size=batch, max_iter=epochs, alpha=0.0, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning after max_iter epochs
        (seconds,) = time_calls(lambda: clf.fit(xtr, ytr))
    result["sklearn MLPClassifier"] = {"seconds": seconds,
                                       "accuracy": float(clf.score(xte, yte))}

    out("")
    out(f"{'':<24} {'wall s':>8} {'test acc':>9}")
    for name, r in result.items():
        out(f"{name:<24} {r['seconds']:>8.2f} {r['accuracy']:>9.4f}")
    return result


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

def _batch_sizes(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not sizes or min(sizes) < 2:
        raise argparse.ArgumentTypeError("batch sizes must be integers >= 2")
    return sizes


def build_parser(prog="python -m dualnn.benchmarks"):
    parser = argparse.ArgumentParser(
        prog=prog, description="Time dualnn's MLP training step against PyTorch eager and "
        "the GEMM-only lower bound (or, with --digits, a small-batch fit on digits).",
        epilog="Other benchmarks (each has its own --help): --import-orders (the thread "
        "policy per import order), --precision mixed_bfloat16 (bfloat16 GEMMs on the CPU vs "
        "PyTorch float32 and autocast), --large-batch (the large-batch experiment), "
        "--workers N (data-parallel MPI scaling).")
    parser.add_argument("--batch-sizes", type=_batch_sizes, default=[512, 4096],
                        help="comma-separated batch sizes (default 512,4096)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="interleaved rounds; results are medians over them (default 5)")
    parser.add_argument("--steps", type=int, default=10,
                        help="timed steps per round and contestant (default 10)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--digits", action="store_true",
                        help="small-batch comparison: fit on scikit-learn's digits instead")
    parser.add_argument("--epochs", type=int, default=30, help="epochs for --digits (30)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return parser


def main(argv=None, prog="python -m dualnn.benchmarks"):
    """Entry point of ``python -m dualnn.benchmarks`` and of the ``dualnn bench`` subcommand."""
    args = build_parser(prog).parse_args(argv)
    if args.repeats < 1 or args.steps < 1:
        print("--repeats and --steps must be >= 1", file=sys.stderr)
        return 2
    with dn.use_device("cpu"):
        if args.digits:
            result = run_digits(not args.no_torch, epochs=args.epochs, dtype=args.dtype)
            if result is None:
                return 1
            status = 0
        else:
            result = run_step_comparison(args.batch_sizes, args.repeats, args.steps,
                                         args.dtype, not args.no_torch)
            status = 0 if result.get("losses_agree", True) else 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
    return status
