"""Mixed precision with real 16-bit arrays on a real GPU (cuBLAS ``GemmEx``, the 16-bit
kernels), against the NumPy twins and float32 training.

Skipped cleanly where CuPy or a usable GPU is missing; the CuPy double runs the same
checks anywhere (``tests/cupy_double/test_mixed_precision_gpu.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
from dualnn.precision import LossScaler
from tests.support.gpu import REQUIRES_GPU

pytestmark = REQUIRES_GPU

PRECISIONS = ["mixed_float16", "mixed_bfloat16"]
STORAGE = {"mixed_float16": "float16", "mixed_bfloat16": "uint16"}


def _data(n=512, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 16)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + 2 * (x[:, 2] - x[:, 3] > 0)
    return x, y


def _model(batchnorm=False):
    layers = [dn.layers.Linear(16, 64, bias=not batchnorm)]
    if batchnorm:
        layers.append(dn.layers.BatchNorm(64))
    layers += [dn.layers.ReLU(), dn.layers.Linear(64, 4)]
    return dn.Sequential(*layers)


def _fit(precision, epochs=5, batchnorm=False, scaler=None, x=None, y=None):
    if x is None:
        x, y = _data()
    with dn.use_backend(dn.device.backend_for("gpu")):
        dn.seed(0)
        model = _model(batchnorm)
        opt = dn.optim.Adam(model.parameters(), lr=1e-2)
        history = dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, x, y, epochs=epochs,
                         batch_size=64, shuffle=False, progress=False, precision=precision,
                         loss_scaler=scaler)
        scores = model.backend.to_host(dn.predict(model, x))
    return model, opt, history, float(np.mean(np.argmax(scores, 1) == y))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("transposes", [(False, True), (True, False), (False, False)])
def test_matmul_mixed_matches_the_numpy_twin(dtype, transposes):
    gpu, cpu = dn.device.backend_for("gpu"), dn.backend.NumpyBackend(fused=False)
    ta, tb = transposes
    rng = np.random.default_rng(1)
    a = cpu.cast_storage(rng.standard_normal((33, 17) if not ta else (17, 33))
                         .astype(np.float32), dtype)
    b = cpu.cast_storage(rng.standard_normal((9, 17) if tb else (17, 9))
                         .astype(np.float32), dtype)
    twin = np.full((33, 9), 0.5, np.float32)
    cpu.matmul_mixed(a, b, twin, transpose_a=ta, transpose_b=tb, accumulate=True)
    out = gpu.asarray(np.full((33, 9), 0.5, np.float32))
    gpu.matmul_mixed(gpu.asarray(a), gpu.asarray(b), out, transpose_a=ta, transpose_b=tb,
                     accumulate=True)
    np.testing.assert_allclose(gpu.to_host(out), twin, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cast_storage_matches_the_numpy_twin(dtype):
    gpu, cpu = dn.device.backend_for("gpu"), dn.backend.NumpyBackend(fused=False)
    x = (np.random.default_rng(2).standard_normal((64, 33)) * 1e3).astype(np.float32)
    stored = gpu.cast_storage(gpu.asarray(x), dtype)
    np.testing.assert_array_equal(gpu.to_host(stored), cpu.cast_storage(x, dtype))
    np.testing.assert_array_equal(gpu.to_host(gpu.cast_storage(stored, "float32")),
                                  cpu.cast_storage(cpu.cast_storage(x, dtype), "float32"))


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("batchnorm", [False, True])
def test_16_bit_activations_float32_master_state_and_accuracy(precision, batchnorm):
    model, _, history, accuracy = _fit(precision, batchnorm=batchnorm)
    _, _, history32, accuracy32 = _fit("float32", batchnorm=batchnorm)
    for layer in model:
        if isinstance(layer, dn.layers.Linear):
            assert layer._weight16.dtype.name == STORAGE[precision]
    for p in model.parameters():
        assert p.data.dtype.name == "float32" and p.grad.dtype.name == "float32"
    assert accuracy32 > 0.7
    assert abs(accuracy - accuracy32) <= 0.05
    assert abs(history["loss"][-1] - history32["loss"][-1]) <= 0.05 * history32["loss"][-1] \
        + 0.01


def test_float16_overflow_skips_the_step_and_halves_the_scale():
    x, y = _data(n=64)
    scaler = LossScaler(init_scale=2.0 ** 40)
    with dn.use_backend(dn.device.backend_for("gpu")):
        dn.seed(0)
        model = _model()
        before = [model.backend.to_host(p.data) for p in model.parameters()]
        dn.fit(model, dn.losses.SoftmaxCrossEntropy(), dn.optim.SGD(model.parameters(), 0.1),
               x, y, epochs=1, batch_size=64, progress=False, precision="mixed_float16",
               loss_scaler=scaler)
        after = [model.backend.to_host(p.data) for p in model.parameters()]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert scaler.scale_value == 2.0 ** 39


def test_bfloat16_steady_state_step_allocates_nothing_new():
    """Through CuPy's allocator hook, as the float32 budget test of test_gpu_training."""
    import cupy

    x, y = _data(n=1024)
    pool = cupy.get_default_memory_pool()
    count = [0]

    def counting(size):
        count[0] += 1
        return pool.malloc(size)

    with dn.use_backend(dn.device.backend_for("gpu")):
        dn.seed(0)
        model = _model()
        opt = dn.optim.Adam(model.parameters(), lr=1e-3)
        loss = dn.losses.SoftmaxCrossEntropy()

        def allocations(rows):
            count[0] = 0
            cupy.cuda.set_allocator(counting)
            try:
                dn.fit(model, loss, opt, x[:rows], y[:rows], epochs=1, batch_size=64,
                       shuffle=False, progress=False, log_interval=1000,
                       precision="mixed_bfloat16")
            finally:
                cupy.cuda.set_allocator(pool.malloc)
            return count[0]

        allocations(256)
        assert allocations(1024) == allocations(256)
