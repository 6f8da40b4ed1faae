"""Training on a real GPU: fit, Sequential, every optimizer and dropout against the CPU,
and the allocation budget seen by CuPy's memory pool.

Skipped cleanly where CuPy or a usable GPU is missing. The CuPy double
(``tests/cupy_double``) runs the same paths without a GPU; these tests confirm them on
the device itself.
"""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
from tests.support.gpu import REQUIRES_GPU

pytestmark = REQUIRES_GPU

OPTIMIZERS = {
    "sgd": lambda p: dn.optim.SGD(p, lr=0.1),
    "sgd_momentum": lambda p: dn.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda p: dn.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: dn.optim.AdamW(p, lr=1e-2),
    "rmsprop": lambda p: dn.optim.RMSprop(p, lr=1e-2, momentum=0.5, centered=True),
    "adagrad": lambda p: dn.optim.Adagrad(p, lr=0.1),
    "adadelta": lambda p: dn.optim.Adadelta(p, lr=1.0),
    "adam_clip_l1_maxnorm": lambda p: dn.optim.Adam(p, lr=1e-2, clip_grad_norm=0.1, l1=1e-4,
                                                    max_norm=1.0),
}


def _data(n=256, features=12, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features)), rng.integers(0, classes, n)


def _model(dtype, dropout=None):
    layers = [dn.layers.Linear(12, 32, dtype=dtype), dn.layers.ReLU()]
    if dropout:
        layers.append(dn.layers.Dropout(dropout))
    layers += [dn.layers.Linear(32, 5, dtype=dtype)]
    return dn.Sequential(*layers)


def _fit(device, make, dtype="float64", epochs=2, **model_options):
    X, y = _data()
    with dn.use_backend(dn.device.backend_for(device)):
        dn.seed(3)
        model = _model(dtype, **model_options)
        opt = make(model.parameters())
        history = dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, X, y, epochs=epochs,
                         batch_size=64, progress=False)
        params = [model.backend.to_host(p.data) for p in model.parameters()]
    return history, params


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fit_with_every_optimizer_matches_cpu(name):
    cpu_history, cpu_params = _fit("cpu", OPTIMIZERS[name])
    gpu_history, gpu_params = _fit("gpu", OPTIMIZERS[name])
    for a, b in zip(gpu_params, cpu_params):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(gpu_history.history["loss"], cpu_history.history["loss"],
                               rtol=1e-7)


def test_float32_fit_matches_cpu_within_float32_tolerance():
    _, cpu = _fit("cpu", OPTIMIZERS["adam"], dtype="float32")
    _, gpu = _fit("gpu", OPTIMIZERS["adam"], dtype="float32")
    for a, b in zip(gpu, cpu):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4)


def test_dropout_model_trains():
    history, _ = _fit("gpu", OPTIMIZERS["adam"], epochs=5, dropout=0.2)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]


def test_steady_state_fit_step_allocates_nothing_new():
    """Allocations counted through CuPy's allocator hook: an epoch of 16 steps makes as
    many as an epoch of 4 (the per-fit and per-epoch ones), so a step makes none."""
    import cupy

    X, y = _data(n=1024)
    pool = cupy.get_default_memory_pool()
    count = [0]

    def counting(size):
        count[0] += 1
        return pool.malloc(size)

    gpu = dn.device.backend_for("gpu")
    with dn.use_backend(gpu):
        dn.seed(0)
        model = _model("float32")
        opt = dn.optim.Adam(model.parameters(), lr=1e-3)
        loss = dn.losses.SoftmaxCrossEntropy()

        def allocations(rows):
            count[0] = 0
            cupy.cuda.set_allocator(counting)
            try:
                dn.fit(model, loss, opt, X[:rows], y[:rows], epochs=1, batch_size=64,
                       shuffle=False, progress=False, log_interval=1000)
            finally:
                cupy.cuda.set_allocator(pool.malloc)
            return count[0]

        allocations(256)  # warm up: kernels, flat buffers, optimizer state
        assert allocations(1024) == allocations(256)
