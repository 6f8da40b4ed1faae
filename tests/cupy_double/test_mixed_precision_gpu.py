"""Mixed precision on the GPU path, through the double: real 16-bit arrays between layers.

``fit(precision="mixed_float16" | "mixed_bfloat16")`` on the CuPy backend runs
:class:`~dualnn.training.mixed_precision_gpu.HalfStorageRunner`: 16-bit activations and
gradients (float16, or bfloat16 as uint16 bits), Linear GEMMs through the double's
``cupy.cuda.cublas.gemmEx`` (float32 compute), float32 master weights, gradients,
optimizer state and batch-norm statistics.
"""

from __future__ import annotations

import numpy as np
import pytest
from dualnn.kernels.cast import reference as cast_reference

import dualnn as dn
from dualnn.precision import LossScaler, Precision
from dualnn.training import mixed_precision_gpu
from dualnn.training.mixed_precision import PrecisionRunner
from tests.cupy_double import double, fake_cublas
from tests.cupy_double.budgets import Budget

STORAGE = {"float16": np.float16, "bfloat16": np.uint16}
BATCH = 16


def _gpu():
    return dn.device.backend_for("gpu")


def _data(n=128, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + 2 * (x[:, 2] - x[:, 3] > 0)
    return x, y


def _model(batchnorm=False, dropout=None):
    layers = [dn.layers.Linear(8, 32, bias=not batchnorm)]
    if batchnorm:
        layers.append(dn.layers.BatchNorm(32))
    layers.append(dn.layers.ReLU())
    if dropout is not None:
        layers.append(dn.layers.Dropout(dropout))
    layers.append(dn.layers.Linear(32, 4))
    return dn.Sequential(*layers)


def _bits_to_float(a, dtype):
    a = np.asarray(a)
    if dtype == "bfloat16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


class _Spy:
    """Captures the runners fit builds (their ``trace`` switched on)."""

    def __init__(self, monkeypatch):
        self.runners = []
        original = mixed_precision_gpu.HalfStorageRunner.__init__

        def init(runner, model, policy):
            original(runner, model, policy)
            runner.trace = []
            self.runners.append(runner)

        monkeypatch.setattr(mixed_precision_gpu.HalfStorageRunner, "__init__", init)


def _fit(model, precision, epochs=1, scaler=None, micro=None, lr=1e-2, x=None, y=None):
    if x is None:
        x, y = _data()
    opt = dn.optim.Adam(model.parameters(), lr=lr)
    history = dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, x, y, epochs=epochs,
                     batch_size=BATCH, shuffle=False, progress=False, precision=precision,
                     loss_scaler=scaler, micro_batch_size=micro)
    return opt, history


# ---------------------------------------------------------------------- the backend ops
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cast_storage_rounds_as_the_reference_and_widens_exactly(dtype):
    b = _gpu()
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((6, 5)) * 100).astype(np.float32)
    x[0, 0], x[0, 1] = 1e6, -3.0e-8  # float16: overflow to inf, flush toward zero
    stored = b.cast_storage(b.asarray(x), dtype)
    host = b.to_host(stored)
    assert host.dtype == STORAGE[dtype]
    with np.errstate(over="ignore"):
        expected = cast_reference.round_to(np, x, dtype)
    np.testing.assert_array_equal(_bits_to_float(host, dtype), expected)
    wide = b.to_host(b.cast_storage(stored, "float32"))
    np.testing.assert_array_equal(wide, expected)
    buffer = b.empty((6, 5), b.storage_dtype(dtype))
    with double.counting() as counts:
        b.cast_storage(b.asarray(x), dtype, out=buffer)
    assert counts.sync == 0 and counts.alloc == 1  # the asarray copy only
    cpu = dn.backend.NumpyBackend(fused=False)
    np.testing.assert_array_equal(cpu.cast_storage(x, dtype), host)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("form", ["a @ b.T", "a.T @ b", "a @ b"])
def test_matmul_mixed_is_gemm_ex_with_float32_compute(dtype, form):
    b, cpu = _gpu(), dn.backend.NumpyBackend(fused=False)
    rng = np.random.default_rng(2)
    shapes = {"a @ b.T": ((7, 5), (3, 5)), "a.T @ b": ((7, 5), (7, 3)),
              "a @ b": ((7, 5), (5, 3))}[form]
    a32, b32 = (rng.standard_normal(s).astype(np.float32) for s in shapes)
    ta, tb = form == "a.T @ b", form == "a @ b.T"
    a16, b16 = cpu.cast_storage(a32, dtype), cpu.cast_storage(b32, dtype)
    exact = (_bits_to_float(a16, dtype).astype(np.float64).T if ta
             else _bits_to_float(a16, dtype).astype(np.float64))
    exact = exact @ (_bits_to_float(b16, dtype).astype(np.float64).T if tb
                     else _bits_to_float(b16, dtype).astype(np.float64))
    ad, bd = b.asarray(a16), b.asarray(b16)
    start = np.full(exact.shape, 0.25, np.float32)
    for accumulate in (False, True):
        out = b.asarray(start)
        fake_cublas.CALLS.clear()
        with double.counting() as counts:
            b.matmul_mixed(ad, bd, out, transpose_a=ta, transpose_b=tb,
                           accumulate=accumulate)
        assert counts.sync == 0 and counts.alloc == 0
        assert len(fake_cublas.CALLS) == 1
        call = fake_cublas.CALLS[0]
        assert call[8] == fake_cublas.CUBLAS_COMPUTE_32F
        assert call[7] == fake_cublas.CUDA_R_32F
        assert call[9] == (1.0 if accumulate else 0.0)
        want = exact + (0.25 if accumulate else 0.0)
        np.testing.assert_allclose(b.to_host(out), want, rtol=1e-5, atol=1e-5)
        twin = start.copy()
        cpu.matmul_mixed(a16, b16, twin, transpose_a=ta, transpose_b=tb,
                         accumulate=accumulate)
        np.testing.assert_allclose(b.to_host(out), twin, rtol=1e-6, atol=1e-6)
    out16 = b.empty(exact.shape, b.storage_dtype(dtype))
    b.matmul_mixed(ad, bd, out16, transpose_a=ta, transpose_b=tb)
    np.testing.assert_array_equal(
        b.to_host(out16), cpu.cast_storage(exact.astype(np.float32), dtype))


def test_matmul_mixed_rejects_mismatched_operands():
    b = _gpu()
    a = b.cast_storage(b.asarray(np.ones((4, 3), np.float32)), "float16")
    w = b.cast_storage(b.asarray(np.ones((2, 3), np.float32)), "bfloat16")
    with pytest.raises(dn.errors.ShapeError, match="matmul_mixed"):
        b.matmul_mixed(a, w, b.empty((4, 2), "float32"), transpose_b=True)
    w16 = b.cast_storage(b.asarray(np.ones((2, 3), np.float32)), "float16")
    with pytest.raises(dn.errors.ShapeError, match="matmul_mixed"):
        b.matmul_mixed(a, w16, b.empty((4, 3), "float32"), transpose_b=True)


# ---------------------------------------------------------------------- the dataflow
def test_precision_runner_is_the_half_storage_runner_on_the_gpu_only():
    with dn.use_backend(_gpu()):
        model = _model()
    runner = PrecisionRunner(model, Precision("mixed_bfloat16"))
    assert isinstance(runner, mixed_precision_gpu.HalfStorageRunner)
    assert runner.modes == ["half", "half"]  # Linear+ReLU fused, Linear
    cpu_model = _model()
    assert type(PrecisionRunner(cpu_model, Precision("mixed_bfloat16"))) is PrecisionRunner


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_fit_passes_16_bit_arrays_between_layers(monkeypatch, precision, batchnorm):
    dtype = precision.split("_")[1]
    storage = np.dtype(STORAGE[dtype]).name
    spy = _Spy(monkeypatch)
    with dn.use_backend(_gpu()):
        dn.seed(0)
        model = _model(batchnorm=batchnorm)
        seen = []
        backend = model.backend
        original = backend.matmul_mixed

        def matmul_mixed(a, b, out, **kwargs):
            seen.append((a.dtype.name, b.dtype.name, out.dtype.name))
            return original(a, b, out, **kwargs)

        monkeypatch.setattr(backend, "matmul_mixed", matmul_mixed)
        _fit(model, precision, x=_data(n=2 * BATCH)[0], y=_data(n=2 * BATCH)[1])
    (runner,) = spy.runners
    assert runner.trace, "no forward ran"
    for _, into, out in runner.trace:
        assert (into, out) == (storage, storage)
    bn_mode = "half" if _gpu().takes_half("batchnorm", dtype) else "wide"
    if batchnorm:
        assert runner.modes == ["half", bn_mode, "half"]
    # forward: x16 W16^T -> 16-bit; backward: dW float32 from 16-bit dy and x; dx 16-bit
    assert (storage, storage, storage) in seen
    assert (storage, storage, "float32") in seen
    assert {s for pair in seen for s in pair[:2]} == {storage}
    for layer in model:
        if isinstance(layer, dn.layers.Linear):
            assert layer._weight16.dtype.name == storage
            assert layer._x.dtype.name == storage
    for p in model.parameters():
        assert p.data.dtype.name == "float32" and p.grad.dtype.name == "float32"
        for value in p.state.values():
            assert getattr(value, "dtype", np.dtype("float32")).name in ("float32", "int64")
    for layer in model:
        if isinstance(layer, dn.layers.BatchNorm):
            assert layer.running_mean.dtype.name == "float32"
            assert layer.running_var.dtype.name == "float32"
            assert float(layer.running_var.sum()) != 32.0  # the statistics moved


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_dropout_runs_widened_between_16_bit_layers(monkeypatch, precision):
    spy = _Spy(monkeypatch)
    with dn.use_backend(_gpu()):
        dn.seed(0)
        model = _model(dropout=0.2)
        x, y = _data(n=BATCH)
        _fit(model, precision, x=x, y=y)
    (runner,) = spy.runners
    assert runner.modes == ["half", "wide", "half"]
    storage = np.dtype(STORAGE[precision.split("_")[1]]).name
    assert {tuple(step[1:]) for step in runner.trace} == {(storage, storage)}


_FLOAT32_RESULTS = {}


def _train_and_score(precision, batchnorm, x, y):
    with dn.use_backend(_gpu()):
        dn.seed(0)
        model = _model(batchnorm=batchnorm)
        _, history = _fit(model, precision, epochs=3, x=x, y=y, lr=5e-2)
        scores = model.backend.to_host(dn.predict(model, x))
    return history.history["loss"][-1], float(np.mean(np.argmax(scores, 1) == y))


@pytest.mark.parametrize(("precision", "batchnorm"), [
    ("mixed_float16", False), ("mixed_bfloat16", False), ("mixed_float16", True)])
def test_accuracy_close_to_float32_training(precision, batchnorm):
    x, y = _data(n=64)
    if batchnorm not in _FLOAT32_RESULTS:
        _FLOAT32_RESULTS[batchnorm] = _train_and_score("float32", batchnorm, x, y)
    loss32, acc32 = _FLOAT32_RESULTS[batchnorm]
    loss16, acc16 = _train_and_score(precision, batchnorm, x, y)
    assert acc32 > 0.6, (loss32, acc32)  # the task is learned at all
    assert abs(acc16 - acc32) <= 0.05, (acc16, acc32)
    assert abs(loss16 - loss32) <= 0.05 * loss32 + 0.01, (loss16, loss32)


def test_weight_copies_refresh_once_per_optimizer_step(monkeypatch):
    calls = []
    original = dn.layers.Linear.refresh_weight16

    def refresh(layer, dtype):
        calls.append(id(layer))
        return original(layer, dtype)

    monkeypatch.setattr(dn.layers.Linear, "refresh_weight16", refresh)
    x, y = _data(n=2 * BATCH)
    with dn.use_backend(_gpu()):
        dn.seed(0)
        model = _model()
        _fit(model, "mixed_bfloat16", micro=BATCH // 4, x=x, y=y)  # 4 micro-batches a step
        w16 = model[0]._weight16
        expected = model.backend.cast_storage(model[0].weight.data, "bfloat16")
        # the copy of the last step's weights: refreshed before the step that used it
        assert w16.dtype.name == "uint16"
        assert not np.array_equal(model.backend.to_host(w16), model.backend.to_host(expected))
    assert len(calls) == 2 * 2  # 2 optimizer steps x 2 Linear layers, not 8 x 2


def test_float16_loss_scaler_skips_and_halves_on_overflow():
    with dn.use_backend(_gpu()):
        dn.seed(0)
        model = _model()
        before = [model.backend.to_host(p.data).copy() for p in model.parameters()]
        scaler = LossScaler(init_scale=2.0 ** 40)  # dL/dlogits * 2**40 overflows float16
        x, y = _data(n=BATCH)
        _fit(model, "mixed_float16", scaler=scaler, x=x, y=y)
        after = [model.backend.to_host(p.data) for p in model.parameters()]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)  # the step was skipped
    assert scaler.scale_value == 2.0 ** 39
    with dn.use_backend(_gpu()):
        scaler = LossScaler(init_scale=2.0 ** 8)
        _fit(model, "mixed_float16", scaler=scaler, x=x, y=y)
        moved = [model.backend.to_host(p.data) for p in model.parameters()]
    assert scaler.scale_value == 2.0 ** 8
    assert any(not np.array_equal(a, b) for a, b in zip(after, moved))


# ---------------------------------------------------------------------- budgets
def _fit_budget(precision):
    """Per-step syncs/allocations inside fit: epochs of 2 and 4 steps, differenced."""
    x, y = _data(n=4 * BATCH)
    with dn.use_backend(_gpu()):
        dn.seed(0)
        model = _model()
        opt = dn.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = dn.losses.SoftmaxCrossEntropy()

        def run(rows):
            with double.counting() as counts:
                dn.fit(model, loss_fn, opt, x[:rows], y[:rows], epochs=1,
                       batch_size=BATCH, shuffle=False, progress=False, log_interval=1000,
                       precision=precision)
            return counts

        run(2 * BATCH)
        short, long = run(2 * BATCH), run(4 * BATCH)
    diff = double.Counts()
    for kind in double.KINDS:
        setattr(diff, kind, getattr(long, kind) - getattr(short, kind))
        diff.sites[kind] = long.sites[kind] - short.sites[kind]
    return Budget(f"fit_{precision}", diff, 2)


def test_bfloat16_fit_step_makes_no_sync_and_no_allocation():
    budget = _fit_budget("mixed_bfloat16")
    print(budget.line())
    assert (budget.sync, budget.alloc) == (0, 0), repr(budget)


def test_float16_fit_step_costs_only_the_loss_scaler():
    budget = _fit_budget("mixed_float16")
    print(budget.line())
    scaler_sites = "dualnn/precision.py"
    others = {kind: [site for site in budget_sites if scaler_sites not in site]
              for kind, budget_sites in (("sync", budget.sync_sites.split("; ")),
                                         ("alloc", budget.alloc_sites.split("; ")))}
    assert others == {"sync": [""] if not budget.sync else [],
                      "alloc": [""] if not budget.alloc else []}, repr(budget)
    assert budget.sync <= 1, repr(budget)  # LossScaler.step's one documented read


def test_float16_fit_step_makes_no_sync_and_no_allocation():
    budget = _fit_budget("mixed_float16")
    assert (budget.sync, budget.alloc) == (0, 0), repr(budget)


# ---------------------------------------------------------------------- memory estimate
def test_estimate_counts_16_bit_activations_and_the_gpu_extras():
    with dn.use_backend(_gpu()):
        model = _model()
    opt = dn.optim.Adam(model.parameters())
    full = dn.memory.summary(model, 64, "float32", opt)
    half = dn.memory.summary(model, 64, "mixed_bfloat16", opt)
    assert half.activation_bytes * 2 == full.activation_bytes
    assert half.weight_copy_bytes == (8 * 32 + 32 * 4) * 2
    assert half.half_storage_bytes == 64 * (8 * 4 + 2 * 4 * 4)
    cpu_half = dn.memory.summary(_model(), 64, "mixed_bfloat16", opt)
    assert cpu_half.weight_copy_bytes == 0
    assert half.peak_bytes == cpu_half.peak_bytes + half.weight_copy_bytes \
        + half.half_storage_bytes


def test_estimate_matches_the_bytes_the_16_bit_path_keeps(monkeypatch):
    """The runner's buffers and weight copies, as the double counts them, against the
    estimate's activation, backward, input and 16-bit extras (one Linear pair)."""
    spy = _Spy(monkeypatch)
    batch = 64
    x, y = _data(n=batch)
    with dn.use_backend(_gpu()):
        dn.seed(0)
        model = _model()
        opt = dn.optim.SGD(model.parameters(), lr=0.1)
        dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, x, y, epochs=1,
               batch_size=batch, progress=False, precision="mixed_bfloat16")
    (runner,) = spy.runners
    kept = sum(buf.nbytes for buf in runner._buffers.values())
    kept += sum(layer._weight16.nbytes for layer in runner.linears)
    s = dn.memory.summary(model, batch, "mixed_bfloat16", opt)
    counted = (s.activation_bytes + s.backward_bytes + s.weight_copy_bytes
               + s.half_storage_bytes + s.input_bytes - batch * 8)  # labels are not here
    float32_batch = batch * 8 * 4  # the feeder's copy, not a runner buffer
    assert abs((kept + float32_batch) - counted) <= 0.15 * counted, (kept, counted)


def test_a_model_that_is_not_sequential_runs_as_one_step(monkeypatch):
    spy = _Spy(monkeypatch)
    x, y = _data(n=BATCH)
    with dn.use_backend(_gpu()):
        dn.seed(0)
        for model, mode in ((dn.layers.Linear(8, 4), "half"),
                            (dn.layers.Softmax(), "wide")):
            before = [model.backend.to_host(p.data).copy() for p in model.parameters()]
            if mode == "wide":  # a parameter-free model: its output only
                runner = PrecisionRunner(model, Precision("mixed_bfloat16"))
                out = runner.forward(model.backend.asarray(x))
                assert out.dtype.name == "float32"
                host = model.backend.to_host(out)
                rounded = dn.backend.NumpyBackend(fused=False).cast_storage(
                    dn.backend.NumpyBackend(fused=False).cast_storage(x, "bfloat16"),
                    "float32")
                e = np.exp(rounded - rounded.max(1, keepdims=True))
                np.testing.assert_allclose(host, e / e.sum(1, keepdims=True), rtol=1e-2,
                                           atol=1e-3)
                continue
            _fit(model, "mixed_bfloat16", x=x, y=y)
            after = [model.backend.to_host(p.data) for p in model.parameters()]
            (runner,) = spy.runners
            assert runner.modes == [mode] and runner.linears == [model]
            assert runner.trace == [(0, "uint16", "uint16")]
            assert any(not np.array_equal(a, b) for a, b in zip(before, after))


def _batchnorm_kernels_take_bfloat16():
    from dualnn.kernels.batchnorm import cuda as batchnorm_cuda

    return any("bfloat16" in dtypes
               for dtypes in getattr(batchnorm_cuda, "HALF_DTYPES", {}).values())


def test_bfloat16_batchnorm_runs_half_once_the_backend_takes_it(monkeypatch):
    """The runner asks the backend at call time: with bfloat16 batch-norm kernels taken,
    the step runs on 16-bit arrays and trains as the widened fallback does."""
    if not _batchnorm_kernels_take_bfloat16():
        pytest.skip("these batch-norm kernels have no bfloat16 variant")
    from dualnn.backend import cupy_backend

    x, y = _data(n=2 * BATCH)
    results = {}
    for half in (False, True):
        monkeypatch.setattr(cupy_backend, "_HALF",
                            ("float16", "bfloat16") if half else ("float16",))
        spy = _Spy(monkeypatch)
        with dn.use_backend(_gpu()):
            dn.seed(0)
            model = _model(batchnorm=True)
            _, history = _fit(model, "mixed_bfloat16", x=x, y=y)
        (runner,) = spy.runners
        assert runner.modes[1] == ("half" if half else "wide")
        assert {tuple(step[1:]) for step in runner.trace} == {("uint16", "uint16")}
        assert model[1].running_mean.dtype.name == "float32"
        results[half] = (history["loss"][-1],
                         model.backend.to_host(model[1].running_var).copy())
    assert abs(results[True][0] - results[False][0]) <= 1e-2 * results[False][0]
    np.testing.assert_allclose(results[True][1], results[False][1], rtol=2e-2, atol=1e-3)
