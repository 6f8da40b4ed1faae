"""Each fused kernel against its reference twin, through the backend.

``impl="fused"`` is ``NumpyBackend(fused=True)`` (or ``CupyBackend(fused=True)``),
``impl="reference"`` the same backend with ``fused=False``, which runs the readable
:mod:`dualnn.kernels.reference` math. :class:`Bandwidth` reports each fused kernel's
effective bandwidth (GB/s of the bytes the op must read and write at least once, at
batch 4096): these ops are memory-bound, so GB/s says how close a kernel is to the
machine's limit. (Bandwidth lives in one class, not beside every ``time_op``, because asv
starts a process per parameter set and the suite must stay quick.)

Data: ``(batch, 1024)`` float32 (the MLP's width and dtype; batch 512 and 4096 sit on
either side of the serial/parallel threshold). Batch-norm backward and Adam also run in
float64. The largest arrays (16 MiB) still fit the last-level cache of the benchmark
machines, so these are hot-cache figures; the training-step benchmarks time the kernels
in context, on data fresh from a GEMM.
"""

from __future__ import annotations

import numpy as np

from .common import DEVICES, backend_for, timed

IMPLS = ["fused", "reference"]
BATCHES = [512, 4096]
FEATURES = 1024
# The benchmark MLP's parameter count: 784*1024 + 2*1024*1024 + 1024*10 + 10 + 3*2*1024.
MLP_PARAMS = 2_910_218


class _KernelBench:
    params = [DEVICES, IMPLS, BATCHES]
    param_names = ["device", "impl", "batch"]
    bytes_per_element = 0  # bytes per element the op must at least read + write, / itemsize
    dtype = "float32"

    def setup(self, device, impl, batch, *extra):
        self.b = backend_for(device, fused=(impl == "fused"))
        self.rng = np.random.default_rng(0)
        self.prepare(batch, *extra)
        for _ in range(3):  # compile (or load from cache), then warm caches and allocator
            self.run()
        self.b.synchronize()

    def dev(self, shape):
        """Random values on the device, placed as dualnn places its own long-lived arrays."""
        return self.b.store(self.rng.standard_normal(shape), self.dtype)

    def time_op(self, *args):
        self.run()
        self.b.synchronize()

    def bandwidth(self):
        """GB/s of the op's minimal traffic, median of 5 synchronized calls."""
        seconds = timed(self.b, self.run, calls=5)
        itemsize = np.dtype(self.dtype).itemsize
        return self.bytes_per_element * itemsize * self.elements / seconds / 1e9


class ActivationBackward(_KernelBench):
    """``dz = dy * f'(saved)``: reads dy and saved, writes dz."""

    params = [DEVICES, IMPLS, BATCHES, ["relu", "sigmoid"]]
    param_names = ["device", "impl", "batch", "kind"]
    bytes_per_element = 3

    def prepare(self, batch, kind):
        self.kind = kind
        self.dy = self.dev((batch, FEATURES))
        self.saved = self.dev((batch, FEATURES))
        self.out = self.b.empty((batch, FEATURES), self.dtype)
        self.elements = self.dy.size

    def run(self):
        self.b.activation_backward(self.kind, self.dy, self.saved, out=self.out)


class EluForward(_KernelBench):
    """``elu(z)``: reads z, writes y."""

    bytes_per_element = 2

    def prepare(self, batch):
        self.z = self.dev((batch, FEATURES))
        self.out = self.b.empty((batch, FEATURES), self.dtype)
        self.elements = self.z.size

    def run(self):
        self.b.activation_forward("elu", self.z, alpha=1.0, out=self.out)


class BiasReluForward(EluForward):
    """``relu(z + b)`` after a GEMM."""

    def prepare(self, batch):
        super().prepare(batch)
        self.bias = self.dev((FEATURES,))

    def run(self):
        self.b.bias_activation_forward(self.z, self.bias, "relu", out=self.out)


class BatchNormReluForwardTrain(_KernelBench):
    """Training batch norm + ReLU: reads x, writes y (+ running statistics)."""

    bytes_per_element = 2

    def prepare(self, batch):
        c = FEATURES
        self.x = self.dev((batch, c))
        self.gamma = self.b.asarray(np.ones(c, self.dtype))
        self.beta = self.b.asarray(np.zeros(c, self.dtype))
        self.running_mean = self.b.asarray(np.zeros(c, self.dtype))
        self.running_var = self.b.asarray(np.ones(c, self.dtype))
        self.out = self.b.empty((batch, c), self.dtype)
        self.elements = self.x.size

    def run(self):
        self.b.batchnorm_forward_train(self.x, self.gamma, self.beta, self.running_mean,
                                       self.running_var, 1e-5, 0.1, relu=True, out=self.out)


class BatchNormReluBackward(BatchNormReluForwardTrain):
    """Training batch-norm backward through the ReLU mask: reads dy and x, writes dx."""

    params = [DEVICES, IMPLS, BATCHES, ["float32", "float64"]]
    param_names = ["device", "impl", "batch", "dtype"]
    bytes_per_element = 3

    def prepare(self, batch, dtype):
        self.dtype = dtype
        super().prepare(batch)
        _, self.mean, self.invstd = self.b.batchnorm_forward_train(
            self.x, self.gamma, self.beta, self.running_mean, self.running_var, 1e-5, 0.1,
            relu=True)
        self.dy = self.dev(self.x.shape)

    def run(self):
        self.b.batchnorm_backward(self.dy, self.x, self.gamma, self.beta, self.mean,
                                  self.invstd, relu=True, out=self.out)


class SoftmaxCrossEntropy(_KernelBench):
    """Loss and dL/dlogits of ``(batch, 10)`` logits: reads logits, writes the gradient."""

    bytes_per_element = 2

    def prepare(self, batch):
        self.logits = self.dev((batch, 10))
        self.labels = self.b.asarray(self.rng.integers(0, 10, batch))
        self.elements = self.logits.size

    def run(self):
        self.b.softmax_cross_entropy(self.logits, self.labels)


class OptimizerUpdate(_KernelBench):
    """In-place optimizer step on one flat array of the MLP's parameter count.

    Bytes: Adam reads p, g, m, v and writes p, m, v (7 per element); SGD with momentum 5;
    RMSprop 5; Adagrad 5; Adadelta 7.
    """

    params = [DEVICES, IMPLS, ["adam", "sgd", "rmsprop", "adagrad", "adadelta"]]
    param_names = ["device", "impl", "optimizer"]
    BYTES = {"adam": 7, "sgd": 5, "rmsprop": 5, "adagrad": 5, "adadelta": 7}

    def prepare(self, optimizer):
        n = MLP_PARAMS
        self.optimizer = optimizer
        self.bytes_per_element = self.BYTES[optimizer]
        self.p = self.dev((n,))
        self.g = self.dev((n,))
        self.s1 = self.b.zeros((n,), self.dtype)
        self.s2 = self.b.zeros((n,), self.dtype)
        self.step = 0
        self.elements = n

    def run(self):
        self.step += 1
        b, opt = self.b, self.optimizer
        if opt == "adam":
            b.adam_update(self.p, self.g, self.s1, self.s2, step=self.step, lr=1e-3)
        elif opt == "sgd":
            b.sgd_update(self.p, self.g, self.s1, lr=1e-3, momentum=0.9,
                         first_step=self.step == 1)
        elif opt == "rmsprop":
            b.rmsprop_update(self.p, self.g, self.s1, None, None, lr=1e-3)
        elif opt == "adagrad":
            b.adagrad_update(self.p, self.g, self.s1, step=self.step, lr=1e-3)
        else:
            b.adadelta_update(self.p, self.g, self.s1, self.s2)


OPS = {
    "relu_backward": (ActivationBackward, ("relu",)),
    "sigmoid_backward": (ActivationBackward, ("sigmoid",)),
    "elu_forward": (EluForward, ()),
    "bias_relu_forward": (BiasReluForward, ()),
    "batchnorm_relu_forward_train": (BatchNormReluForwardTrain, ()),
    "batchnorm_relu_backward": (BatchNormReluBackward, ("float32",)),
    "softmax_cross_entropy": (SoftmaxCrossEntropy, ()),
    "adam_update": (OptimizerUpdate, ("adam",)),
    "sgd_momentum_update": (OptimizerUpdate, ("sgd",)),
}


class Bandwidth:
    """Effective bandwidth of each fused kernel, float32, batch 4096 (optimizers: the MLP's
    2.9M parameters)."""

    params = [DEVICES, list(OPS)]
    param_names = ["device", "op"]

    def setup(self, device, op):
        cls, extra = OPS[op]
        self.bench = cls()
        if cls is OptimizerUpdate:
            self.bench.setup(device, "fused", *extra)
        else:
            self.bench.setup(device, "fused", 4096, *extra)

    def track_bandwidth(self, device, op):
        return self.bench.bandwidth()

    track_bandwidth.unit = "GB/s"
