"""Helpers shared by the benchmark modules (no benchmarks here).

Conventions
-----------
- Every class with a ``device`` axis takes ``"cpu"`` and ``"gpu"``; ``setup`` raises
  ``NotImplementedError`` for ``"gpu"`` where no GPU is usable, which asv reports as
  "n/a" (skipped), not as a failure.
- Setup warms up (first-call JIT compiles, allocator, caches) and timed calls end with
  ``backend.synchronize()`` so GPU timings measure finished work (asv times wall clock).
"""

from __future__ import annotations

import time

import numpy as np

import dualnn as dn



def _preload_numba():
    """Pay Numba's import and one-off LLVM start-up (~0.7 s) once, in asv's fork server.

    asv imports the suite in a server process and forks one child per benchmark and
    parameter set; without this every child pays it again. Only a tiny *serial* kernel
    runs here, so no thread pool exists before the fork.
    """
    try:
        backend = dn.backend.NumpyBackend(fused=True)
        x = np.ones((4, 4), dtype=np.float32)
        backend.activation_backward("relu", x, x, out=np.empty_like(x))
    except Exception:  # a broken kernel shows up in the benchmarks themselves
        pass


_preload_numba()

DEVICES = ["cpu", "gpu"]
MLP_SIZES = (784, 1024, 1024, 1024, 10)

_gpu_usable = None


def gpu_usable():
    """True when dualnn sees a usable GPU (checked once per process)."""
    global _gpu_usable
    if _gpu_usable is None:
        _gpu_usable = len(dn.available_devices()) > 1
    return _gpu_usable


def require_device(device):
    """Raise ``NotImplementedError`` (asv: skip) when ``device`` is not usable here."""
    if device == "gpu" and not gpu_usable():
        raise NotImplementedError("no usable GPU on this machine")


def backend_for(device, fused=None):
    """A fresh backend of ``device``; ``fused`` None follows ``DUALNN_FUSED``."""
    require_device(device)
    if device == "cpu":
        return dn.backend.NumpyBackend(fused=fused)
    return dn.backend.CupyBackend(0, fused=fused)


def build_mlp(sizes=MLP_SIZES, dtype="float32", seed=0):
    """``Linear(bias=False) -> BatchNorm -> ReLU`` blocks, then a final ``Linear``."""
    dn.seed(seed)
    L = dn.layers
    layers = []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [L.Linear(n_in, n_out, bias=False, init="he", dtype=dtype),
                   L.BatchNorm(n_out, dtype=dtype), L.ReLU()]
    layers.append(L.Linear(sizes[-2], sizes[-1], dtype=dtype))
    return dn.Sequential(*layers)


class TrainingStep:
    """One MLP training step (forward, softmax cross-entropy, backward, Adam) on a device."""

    def __init__(self, device, batch, dtype="float32", sizes=MLP_SIZES, seed=0):
        require_device(device)
        self.batch = batch
        self.sizes = sizes
        self.dtype = dtype
        with dn.use_device(device) as backend:
            self.backend = backend
            self.model = build_mlp(sizes, dtype, seed)
        self.loss_fn = dn.losses.SoftmaxCrossEntropy()
        self.opt = dn.optim.Adam(self.model.parameters(), lr=1e-3)
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((batch, sizes[0])).astype(dtype)
        y = rng.integers(0, sizes[-1], batch)
        self.x = backend.asarray(x)
        self.y = backend.asarray(y)

    def __call__(self):
        logits = self.model.forward(self.x, training=True)
        loss = self.loss_fn.forward(logits, self.y)
        self.model.backward(self.loss_fn.backward(), input_grad=False)
        self.opt.step()
        self.opt.zero_grad()
        self.backend.synchronize()
        return loss

    def warm_up(self, steps=3):
        for _ in range(steps):
            self()

    def samples_per_second(self, steps=5):
        """Median throughput over ``steps`` timed steps."""
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            self()
            times.append(time.perf_counter() - t0)
        return self.batch / float(np.median(times))

    def minimal_bytes(self):
        """Bytes a step must allocate at least: what the forward keeps for the backward
        (each Linear output, each fused BatchNorm -> ReLU output, the logits) plus one
        gradient per parameter. The input batch exists before the step and is not counted."""
        itemsize = np.dtype(self.dtype).itemsize
        widths = [2 * n_out for n_out in self.sizes[1:-1]] + [self.sizes[-1]]
        activations = self.batch * sum(widths) * itemsize
        gradients = sum(int(np.prod(p.data.shape)) for p in self.model.parameters()) * itemsize
        return activations + gradients


def timed(backend, fn, calls=10):
    """Median seconds of ``fn()`` (synchronized) over ``calls`` calls."""
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        backend.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
