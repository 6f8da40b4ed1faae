"""Forward + backward of single layers (Linear, BatchNorm, activations) on a device."""

from __future__ import annotations

import numpy as np

import dualnn as dn

from .common import DEVICES, require_device

FEATURES = 1024


class _LayerBench:
    params = [DEVICES, ["float32", "float64"], [512, 4096]]
    param_names = ["device", "dtype", "batch"]

    def make_layer(self, dtype, *extra):
        raise NotImplementedError

    def setup(self, device, dtype, batch, *extra):
        require_device(device)
        with dn.use_device(device) as backend:
            self.backend = backend
            self.layer = self.make_layer(dtype, *extra)
        rng = np.random.default_rng(0)
        self.x = backend.asarray(rng.standard_normal((batch, FEATURES)).astype(dtype))
        y = self.layer.forward(self.x, training=True)
        self.dy = backend.asarray(rng.standard_normal(y.shape).astype(dtype))
        for _ in range(2):
            self.time_forward_backward()

    def time_forward_backward(self, *args):
        self.layer.forward(self.x, training=True)
        self.layer.backward(self.dy)
        self.backend.synchronize()


class Linear(_LayerBench):
    """``y = x W^T + b``, 1024 -> 1024 features: three GEMMs and a bias pass each way."""

    def make_layer(self, dtype):
        return dn.layers.Linear(FEATURES, FEATURES, bias=True, dtype=dtype)


class BatchNorm(_LayerBench):
    """Training-mode batch norm over 1024 features."""

    def make_layer(self, dtype):
        return dn.layers.BatchNorm(FEATURES, dtype=dtype)


class BatchNormReLU(_LayerBench):
    """The fused ``BatchNorm -> ReLU`` block as ``Sequential`` runs it (float32)."""

    params = [DEVICES, ["float32"], [512, 4096]]

    def make_layer(self, dtype):
        return dn.Sequential(dn.layers.BatchNorm(FEATURES, dtype=dtype), dn.layers.ReLU())


class Activation(_LayerBench):
    """Elementwise activations on (4096, 1024) float32."""

    params = [DEVICES, ["float32"], [4096], ["ReLU", "LeakyReLU", "ELU", "Sigmoid", "Tanh"]]
    param_names = ["device", "dtype", "batch", "kind"]

    def make_layer(self, dtype, kind):
        return getattr(dn.layers, kind)()
