"""A full MLP training step, its memory, and one ``fit`` epoch.

The model is the one ``python -m dualnn.bench`` compares with PyTorch: 784-1024-1024-1024-10,
``Linear(bias=False) -> BatchNorm -> ReLU`` blocks, softmax cross-entropy, Adam, float32.
"""

from __future__ import annotations

import tracemalloc

import numpy as np

import dualnn as dn

from .common import DEVICES, TrainingStep, build_mlp, require_device


class TrainStep:
    """Time and throughput of one training step."""

    params = [DEVICES, [512, 4096]]
    param_names = ["device", "batch"]
    timeout = 300

    def setup(self, device, batch):
        self.step = TrainingStep(device, batch)
        self.step.warm_up(3)

    def time_step(self, device, batch):
        self.step()

    def track_samples_per_second(self, device, batch):
        return self.step.samples_per_second(steps=5)

    track_samples_per_second.unit = "samples/s"


class TrainStepMemory:
    """Memory of a training step.

    ``peakmem_step`` is the process's peak resident memory (model, optimizer state, data and
    the step's temporaries). ``track_tracemalloc_ratio`` is the peak of the bytes NumPy
    allocates during one warmed-up step (tracemalloc), divided by the least a step must
    allocate: each Linear output, each fused BatchNorm -> ReLU output and the logits (what
    the forward keeps for the backward) plus one gradient per parameter
    (``TrainingStep.minimal_bytes``). 1.0 would mean no temporaries beyond those.
    Arrays a Numba kernel allocates internally are invisible to tracemalloc.
    """

    params = [["cpu"], [4096]]
    param_names = ["device", "batch"]
    timeout = 300

    def setup(self, device, batch):
        self.step = TrainingStep(device, batch)
        self.step.warm_up(2)

    def peakmem_step(self, device, batch):
        self.step()

    def track_tracemalloc_ratio(self, device, batch):
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            self.step()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return peak / self.step.minimal_bytes()

    track_tracemalloc_ratio.unit = "peak / (activations + gradients)"

    def track_tracemalloc_peak_mib(self, device, batch):
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            self.step()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return peak / 2**20

    track_tracemalloc_peak_mib.unit = "MiB"


class FitEpoch:
    """One ``dn.fit`` epoch over 4096 synthetic samples (8 batches of 512)."""

    params = [DEVICES]
    param_names = ["device"]
    timeout = 300
    samples = 4096

    def setup(self, device):
        require_device(device)
        if not hasattr(dn, "fit"):
            raise NotImplementedError("dualnn.fit is not available in this version")
        rng = np.random.default_rng(0)
        self.X = rng.standard_normal((self.samples, 784)).astype("float32")
        w = rng.standard_normal((784, 10)).astype("float32")
        self.y = np.argmax(self.X @ w, axis=1)
        with dn.use_device(device):
            self.model = build_mlp()
        self.loss_fn = dn.losses.SoftmaxCrossEntropy()
        self.opt = dn.optim.Adam(self.model.parameters(), lr=1e-3)
        self.device = device
        self.fit_one()  # warm-up epoch

    def fit_one(self):
        with dn.use_device(self.device):
            dn.fit(self.model, self.loss_fn, self.opt, self.X, self.y, epochs=1,
                   batch_size=512, shuffle=True, progress=False)
        self.model.backend.synchronize()

    def time_fit_epoch(self, device):
        self.fit_one()
