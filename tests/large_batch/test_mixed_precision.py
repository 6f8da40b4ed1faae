"""fit(precision=...): 16-bit activations and gradients, float32 master weights, loss
scaling for float16, and the 16-bit rounding ops."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from dualnn.kernels.cast import reference as cast

import dualnn as dn
from dualnn import layers as L
from dualnn.errors import ConfigurationError
from dualnn.precision import LossScaler, PerformanceWarning
from dualnn.training import mixed_precision
from dualnn.training.mixed_precision import PrecisionRunner

MIXED = ["mixed_float16", "mixed_bfloat16"]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerformanceWarning)
        yield


def _data(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 8)).astype(np.float32)
    y = ((X[:, 0] > 0).astype(np.int64) + (X[:, 1] + X[:, 2] > 0.5)).astype(np.int64)
    return X, y


def _mlp(batch_norm=True):
    dn.seed(5)
    layers = [L.Linear(8, 32)]
    if batch_norm:
        layers.append(L.BatchNorm(32))
    layers += [L.ReLU(), L.Linear(32, 3)]
    return dn.Sequential(*layers)


def _fit(precision, epochs=8, **kw):
    model = _mlp()
    opt = dn.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    X, y = _data(1024, 0)
    hist = dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, X, y, epochs=epochs,
                  batch_size=64, progress=False, precision=precision, **kw)
    return model, opt, hist


@pytest.fixture(scope="module")
def float32_accuracy():
    model, _, _ = _fit("float32")
    Xt, yt = _data(1024, 1)
    return dn.evaluate(model, dn.losses.SoftmaxCrossEntropy(), Xt, yt)["accuracy"]


@pytest.mark.parametrize("precision", MIXED)
def test_mixed_training_converges_like_float32(precision, float32_accuracy):
    model, _, hist = _fit(precision)
    Xt, yt = _data(1024, 1)
    acc = dn.evaluate(model, dn.losses.SoftmaxCrossEntropy(), Xt, yt)["accuracy"]
    assert float32_accuracy > 0.85
    assert abs(acc - float32_accuracy) < 0.03, (acc, float32_accuracy)
    # master weights, their gradients, optimizer state and batch norm stay float32
    for p in model.parameters():
        assert p.data.dtype == np.float32 and p.grad.dtype == np.float32
        assert all(v.dtype == np.float32 for v in p.state.values() if hasattr(v, "dtype"))
    assert model[1].running_mean.dtype == np.float32
    assert model[1].running_var.dtype == np.float32
    assert ("loss_scale" in hist) == (precision == "mixed_float16")


@pytest.mark.parametrize("precision,store", [("mixed_float16", np.float16),
                                             ("mixed_bfloat16", None)])
def test_activations_between_layers_are_16_bit_values(precision, store):
    """Every array handed from step to step holds 16-bit values, or (bfloat16 GEMMs on the
    CPU) is registered as bfloat16 storage whose rounding its reader does (the GEMMs and
    batch norm; their bit-identity is tested in tests/test_bf16_gemm.py)."""
    import torch

    model = _mlp()
    runner = PrecisionRunner(model, dn.precision.Precision(precision))
    gemms = getattr(runner, "gemms", None)
    seen = []

    def recording(forward):
        def wrapped(x, *a, **k):
            seen.append((np.array(x), gemms is not None and gemms.deferred(x)))
            return forward(x, *a, **k)
        return wrapped

    for _, step in model.plan():
        step.forward = recording(step.forward)
    X, _ = _data(16, 2)
    out = runner.forward(model.backend.asarray(X))
    seen.append((np.array(out), False))  # the loss reads the logits: rounded
    assert len(seen) == len(model.plan()) + 1
    for a, deferred in seen:
        assert a.dtype == np.float32
        if deferred:
            continue
        if store is not None:
            as16 = a.astype(store).astype(np.float32)
        else:
            as16 = torch.from_numpy(a).to(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(a, as16)
    # the input is stored in 16 bits: rounded, or left to its reader (the first GEMM)
    first, deferred = seen[0]
    assert deferred or not np.array_equal(first, X)
    if gemms is not None:
        assert sum(d for _, d in seen) >= 2  # the input and the batch norm's input


def test_mixed_precision_is_not_a_no_op():
    a, _, _ = _fit("float32", epochs=1)
    b, _, _ = _fit("mixed_bfloat16", epochs=1)
    diff = max(np.max(np.abs(p.data - q.data)) for p, q in zip(a.parameters(),
                                                                b.parameters()))
    assert diff > 1e-5


class _OverflowOnCall(dn.losses.SoftmaxCrossEntropy):
    """Its gradient explodes (beyond float16 after scaling) on the given backward calls."""

    def __init__(self, bad_calls):
        super().__init__()
        self.bad_calls = set(bad_calls)
        self.calls = 0

    def backward(self):
        self.calls += 1
        dy = super().backward()
        return dy * 1e4 if self.calls in self.bad_calls else dy


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_loss_scaler_skips_the_overflowing_step_inside_fit():
    model = _mlp(batch_norm=False)
    opt = dn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    steps, snapshots = [], []
    original = opt.step

    def step(*a, **k):
        steps.append(1)
        return original(*a, **k)

    opt.step = step
    scaler = LossScaler(init_scale=2.0 ** 16, growth_interval=2)
    loss = _OverflowOnCall({3})
    X, y = _data(256, 0)

    class Watch(dn.callbacks.Callback):
        def on_epoch_end(self, run, epoch, logs):
            snapshots.append(logs)

    hist = dn.fit(model, loss, opt, X, y, epochs=1, batch_size=64, progress=False,
                  precision="mixed_float16", loss_scaler=scaler, callbacks=[Watch()])
    # 4 batches; batch 3 overflowed: skipped, the optimizer saw 3 steps
    assert len(steps) == 3
    assert hist["skipped_steps"] == [1.0]
    # steps 1, 2 clean -> x2; step 3 overflow -> x0.5; step 4 clean (tracker 1)
    assert scaler.get_scale() == 2.0 ** 16
    assert hist["loss_scale"] == [2.0 ** 16]
    assert scaler._growth_tracker == 1
    assert all(np.all(np.isfinite(p.data)) for p in model.parameters())


def test_optimizer_sees_unscaled_gradients():
    grads = {}

    def run(precision):
        model = _mlp(batch_norm=False)
        opt = dn.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-2)
        original = opt.step

        def step(*a, **k):
            grads[precision] = [np.array(p.grad) for p in opt.params]
            return original(*a, **k)

        opt.step = step
        X, y = _data(64, 0)
        dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, X, y, epochs=1, batch_size=64,
               progress=False, precision=precision)

    run("float32")
    run("mixed_float16")
    # equal up to 16-bit rounding (a few ReLU masks flip), not off by the scale 2**16
    for a, b in zip(grads["float32"], grads["mixed_float16"]):
        assert np.linalg.norm(b - a) < 0.05 * np.linalg.norm(a)


def test_performance_warning_once_per_precision(monkeypatch):
    monkeypatch.setattr(mixed_precision, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        # mixed_float16: mixed_bfloat16 does not warn where oneMKL's bfloat16 GEMM runs
        with pytest.raises(PerformanceWarning, match="slower than float32"):
            _fit("mixed_float16", epochs=1)
        _fit("mixed_float16", epochs=1)  # not again
    assert issubclass(PerformanceWarning, UserWarning)


def test_bad_precision_arguments():
    with pytest.raises(ConfigurationError, match="precision"):
        _fit("float8", epochs=1)
    dn.seed(0)
    model = dn.Sequential(L.Linear(8, 3, dtype="float64"))
    X, y = _data(32, 0)
    with pytest.raises(ConfigurationError, match="float32"):
        dn.fit(model, dn.losses.SoftmaxCrossEntropy(), dn.optim.SGD(model.parameters()),
               X, y, precision="mixed_bfloat16", progress=False)
    with pytest.raises(ConfigurationError, match="loss_scaler"):
        _fit("mixed_float16", epochs=1, loss_scaler=2.0)


# ---------------------------------------------------------------------- rounding ops

def _edge_values():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(4096) * np.exp(rng.uniform(-30, 30, 4096))).astype(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, 1e-42, 65504,
                        65520, 6e-8, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -9],
                       dtype=np.float32)
    # exact bfloat16 ties: halfway between neighbours, both parities
    ties = (np.arange(64, dtype=np.uint32) << 16 | 0x3F800000 | 0x8000).view(np.float32)
    return np.concatenate([x, special, ties])


def test_round_bfloat16_matches_torch_including_ties_and_specials():
    torch = pytest.importorskip("torch")
    x = _edge_values()
    got = cast.round_bfloat16(np, x)
    want = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_round_float16_matches_numpy_half():
    x = _edge_values()
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(cast.round_float16(np, x),
                                      x.astype(np.float16).astype(np.float32))


def test_backend_round_to_precision():
    b = dn.backend.NumpyBackend()
    x = _edge_values()
    np.testing.assert_array_equal(b.round_to_precision(x, "bfloat16"),
                                  cast.round_bfloat16(np, x))
    with pytest.raises(ValueError, match="float8"):
        b.round_to_precision(x, "float8")


@pytest.mark.parametrize("repeat", [1, 64])  # serial and parallel builds
def test_cpu_kernels_match_the_reference_twins(repeat):
    from dualnn.kernels import cpu

    x = np.tile(_edge_values(), repeat).reshape(repeat, -1)
    for name in ("bfloat16", "float16"):
        ref = getattr(cast, "round_" + name)
        with np.errstate(over="ignore"):
            want = ref(np, x)
        got = getattr(cpu, "round_" + name)(x, out=np.empty_like(x))
        np.testing.assert_array_equal(got, want)
        inplace = x.copy()
        getattr(cpu, "round_" + name)(inplace, out=inplace)
        np.testing.assert_array_equal(inplace, want)
    with pytest.raises(ValueError, match="float32"):
        cpu.round_bfloat16(x.astype(np.float64), out=np.empty_like(x))


@pytest.mark.parametrize("fused", [True, False])
def test_numpy_backend_rounds_with_either_path(fused):
    b = dn.backend.NumpyBackend(fused=fused)
    x = _edge_values()
    for name in ("bfloat16", "float16"):
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(b.round_to_precision(x, name),
                                          getattr(cast, "round_" + name)(np, x))


SIM_SCRIPT = """
import numpy as np
from dualnn.kernels import _cuda
from dualnn.kernels.cast import cuda as cast_cuda
from dualnn.kernels.cast import reference as cast

x = np.concatenate([np.array([np.nan, -np.nan, np.inf, -np.inf, 3.4e38, 0.0, -0.0, 1e-42],
                             dtype=np.float32),
                    (np.arange(700, dtype=np.uint32) << 13 | 0x3F800000).view(np.float32),
                    np.random.default_rng(0).standard_normal(700).astype(np.float32)])
_cuda.config.max_blocks = 2  # exercise the grid-stride loop
x2 = x.reshape(2, -1)
got = cast_cuda.round_bfloat16(x2, out=np.empty_like(x2)).reshape(-1)
want = cast.round_bfloat16(np, x)
assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), "mismatch"
inplace = x.copy()
cast_cuda.round_bfloat16(inplace, out=inplace)
assert np.array_equal(inplace.view(np.uint32), want.view(np.uint32)), "in place"
assert ("round_bfloat16_bits", "float32", None) in cast_cuda.KERNELS._compiled
try:
    cast_cuda.round_bfloat16(x.astype(np.float64), out=np.empty(x.shape))
except TypeError:
    pass
else:
    raise AssertionError("float64 accepted")
print("ok")
"""


def test_cuda_kernel_matches_the_reference_under_the_simulator():
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    job = subprocess.run([sys.executable, "-c", SIM_SCRIPT], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert job.returncode == 0 and "ok" in job.stdout, job.stderr[-3000:]


def test_cuda_kernel_compiles_to_ptx():
    import os

    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1":
        pytest.skip("compile_ptx needs the real CUDA target")
    cuda = pytest.importorskip("numba.cuda")
    from dualnn.kernels.cast import cuda as cast_cuda

    for name in cast_cuda.SIGNATURES:
        try:
            ptx, _ = cuda.compile_ptx(cast_cuda.KERNELS.python_kernel(name, "float32"),
                                      cast_cuda.KERNELS.signature(name, "float32"), cc=(8, 0))
        except Exception as exc:  # noqa: BLE001 - no NVRTC here
            pytest.skip(f"cannot compile PTX: {exc}")
        assert ".entry" in ptx and ".f64" not in ptx
