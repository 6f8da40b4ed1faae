"""The bfloat16 GEMM (dualnn.backend.bf16_gemm: oneDNN's or oneMKL's, each tested where
installed), the NumPy backend's bfloat16 GEMM context and mixed_bfloat16 training on it,
the choice of library, the fallback when none is there, and the thread policy."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from dualnn.kernels.cast import reference as cast

import dualnn as dn
from dualnn import _threads
from dualnn import layers as L
from dualnn.backend import bf16_gemm, mkl, onednn
from dualnn.errors import ShapeError
from dualnn.precision import PerformanceWarning, Precision
from dualnn.training import mixed_precision
from dualnn.training.mixed_precision import PrecisionRunner

AVAILABLE, REASON = bf16_gemm.availability()
needs_gemm = pytest.mark.skipif(not AVAILABLE, reason=f"bfloat16 GEMM unavailable: {REASON}")


@pytest.fixture(params=bf16_gemm.LIBRARIES)
def library(request, monkeypatch):
    """Each library in turn (``DUALNN_BF16_LIBRARY``), skipped only where it is missing."""
    monkeypatch.setenv(bf16_gemm.LIBRARY_VARIABLE, request.param)
    bf16_gemm._reset_for_tests()
    ok, reason = bf16_gemm.availability()
    if not ok:
        bf16_gemm._reset_for_tests()
        pytest.skip(f"{request.param}: {reason}")
    assert bf16_gemm.info()["name"] == request.param
    yield request.param
    monkeypatch.delenv(bf16_gemm.LIBRARY_VARIABLE)
    bf16_gemm._reset_for_tests()


def _bits(a):
    return cast.bfloat16_bits(np, np.ascontiguousarray(a, dtype=np.float32))


def _value(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _reference(a_bits, b_bits):
    return _value(a_bits).astype(np.float64) @ _value(b_bits).astype(np.float64)


def _layout(a, layout):
    """``a`` as C rows, as the transpose of a C array, or as rows with a longer stride."""
    if layout == "c":
        return np.ascontiguousarray(a)
    if layout == "t":
        return np.ascontiguousarray(a.T).T
    wide = np.zeros((a.shape[0], a.shape[1] + 3), a.dtype)
    wide[:, :a.shape[1]] = a
    return wide[:, :a.shape[1]]


SHAPES = [(1, 1, 1), (1, 7, 5), (5, 7, 1), (1, 300, 1), (3, 1, 4), (16, 64, 32),
          (33, 129, 65), (128, 784, 256), (257, 31, 3)]


@needs_gemm
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("la,lb", [("c", "c"), ("t", "c"), ("c", "t"), ("t", "t"),
                                   ("wide", "c"), ("c", "wide")])
def test_gemm_matches_float64_on_the_bfloat16_values(library, m, k, n, la, lb):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a = _bits(rng.standard_normal((m, k)))
    b = _bits(rng.standard_normal((k, n)))
    got = bf16_gemm.gemm(_layout(a, la), _layout(b, lb))
    ref = _reference(a, b)
    assert got.dtype == np.float32 and got.shape == (m, n)
    # float32 accumulation of exact bfloat16 products: error ~ k * eps32 * sum |a||b|
    bound = 4 * k * np.finfo(np.float32).eps * (np.abs(_value(a)) @ np.abs(_value(b))) + 1e-30
    assert np.all(np.abs(got - ref) <= bound)


@needs_gemm
def test_gemm_alpha_beta_accumulate_into_out(library):
    rng = np.random.default_rng(1)
    a, b = _bits(rng.standard_normal((9, 40))), _bits(rng.standard_normal((40, 6)))
    start = rng.standard_normal((9, 6)).astype(np.float32)
    out = start.copy()
    assert bf16_gemm.gemm(a, b, out=out, alpha=0.5, beta=1.0) is out
    np.testing.assert_allclose(out, start + 0.5 * _reference(a, b), rtol=1e-5, atol=1e-5)
    bf16_gemm.gemm(a, b, out=out)  # beta 0 overwrites
    np.testing.assert_allclose(out, _reference(a, b), rtol=1e-5, atol=1e-5)


@needs_gemm
def test_gemm_refuses_what_it_cannot_pass_to_cblas(library):
    a = np.zeros((4, 6), np.uint16)
    b = np.zeros((6, 5), np.uint16)
    with pytest.raises(ShapeError, match="uint16"):
        bf16_gemm.gemm(a.astype(np.float32), b)
    with pytest.raises(ShapeError, match="shape"):
        bf16_gemm.gemm(a, np.zeros((5, 5), np.uint16))
    with pytest.raises(ShapeError, match="C-contiguous rows or the transpose"):
        bf16_gemm.gemm(np.zeros((4, 12), np.uint16)[:, ::2], b)
    with pytest.raises(ShapeError, match="C-contiguous rows or the transpose"):
        bf16_gemm.gemm(a[::-1], b)
    with pytest.raises(ShapeError, match="out must be"):
        bf16_gemm.gemm(a, b, out=np.zeros((4, 5), np.float64))
    with pytest.raises(ShapeError, match="out must be"):
        bf16_gemm.gemm(a, b, out=np.zeros((5, 4), np.float32).T)


@needs_gemm
def test_gemm_empty_dimensions(library):
    assert bf16_gemm.gemm(np.zeros((0, 3), np.uint16), np.zeros((3, 2), np.uint16)).shape \
        == (0, 2)
    out = np.full((2, 3), 5.0, np.float32)
    bf16_gemm.gemm(np.zeros((2, 0), np.uint16), np.zeros((0, 3), np.uint16), out=out, beta=0.5)
    np.testing.assert_array_equal(out, 2.5)


# ------------------------------------------------------------------ the backend context

@needs_gemm
def test_backend_matmul_in_the_context_is_the_gemm_of_the_rounded_operands():
    be = dn.backend.NumpyBackend(fused=True)
    gemms, why = be.bfloat16_gemms()
    assert why is None
    rng = np.random.default_rng(2)
    x = rng.standard_normal((33, 20)).astype(np.float32)
    w = rng.standard_normal((12, 20)).astype(np.float32)
    dy = rng.standard_normal((33, 12)).astype(np.float32)
    ref = _reference(_bits(x), _bits(w).T)
    with gemms.active():
        y = be.matmul(x, w.T)
        grad = np.ones((12, 20), np.float32)
        be.matmul_accumulate(dy.T, x, grad)
        dx = be.matmul(dy, w, out=np.empty((33, 20), np.float32))
        y64 = be.matmul(x.astype(np.float64), w.T.astype(np.float64))  # float64: NumPy
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, 1 + _reference(_bits(dy).T, _bits(x)), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(dx, _reference(_bits(dy), _bits(w)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y64, x.astype(np.float64) @ w.T.astype(np.float64))
    assert not np.allclose(y, x.astype(np.float64) @ w.T, rtol=1e-6, atol=0)
    # outside the context: NumPy float32 again
    np.testing.assert_array_equal(be.matmul(x, w.T), x @ w.T)


@needs_gemm
def test_weights_and_rounded_activations_are_converted_once_per_step():
    be = dn.backend.NumpyBackend(fused=True)
    gemms, _ = be.bfloat16_gemms()
    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 24)).astype(np.float32)
    x = rng.standard_normal((8, 24)).astype(np.float32)
    g = rng.standard_normal((8, 16)).astype(np.float32)
    gemms.begin_step([w])
    with gemms.active():
        xr = be.round_to_precision(x, "bfloat16")
        np.testing.assert_array_equal(xr, cast.round_bfloat16(np, x))
        gr = be.round_to_precision(g, "bfloat16")
        be.matmul(xr, w.T)
        be.matmul_accumulate(gr.T, xr, np.zeros((16, 24), np.float32), overwrite=True)
        be.matmul(gr, w)
        assert gemms.conversions == 0  # w converted once (cached), xr and gr by rounding
        be.matmul(x, w.T)  # x itself was never rounded: converted at the GEMM
        assert gemms.conversions == 1
    w += 1.0  # the optimizer step; the next step must see the new weights
    gemms.begin_step([w])
    with gemms.active():
        y = be.matmul(xr, w.T)
    np.testing.assert_allclose(y, _reference(_bits(xr), _bits(w).T), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ training

def _digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = ((X - X.mean(0)) / (X.std(0) + 1e-6)).astype(np.float32)
    return X[:1400], y[:1400].astype(np.int64), X[1400:], y[1400:].astype(np.int64)


def _digits_fit(monkeypatch, switch):
    monkeypatch.setenv("DUALNN_BF16_GEMM", switch)
    xtr, ytr, xte, yte = _digits()
    dn.seed(0)
    model = dn.Sequential(L.Linear(64, 96, bias=False), L.BatchNorm(96), L.ReLU(),
                          L.Linear(96, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerformanceWarning)
        dn.fit(model, dn.losses.SoftmaxCrossEntropy(), dn.optim.Adam(model.parameters(),
               lr=3e-3), xtr, ytr, epochs=6, batch_size=64, progress=False,
               precision="mixed_bfloat16")
    return model, float((np.argmax(dn.predict(model, xte), 1) == yte).mean())


@needs_gemm
def test_digits_fit_fast_path_matches_the_emulation(monkeypatch):
    fast_model, fast = _digits_fit(monkeypatch, "1")
    slow_model, slow = _digits_fit(monkeypatch, "0")
    assert slow > 0.85
    assert abs(fast - slow) <= 0.03, (fast, slow)
    # not the same computation: the weights were rounded to bfloat16 in the fast GEMMs
    assert any(not np.array_equal(p.data, q.data)
               for p, q in zip(fast_model.parameters(), slow_model.parameters()))


@needs_gemm
def test_runner_uses_the_gemms_and_fit_does_not_warn(monkeypatch):
    monkeypatch.setattr(mixed_precision, "_warned", set())
    dn.seed(1)
    model = dn.Sequential(L.Linear(8, 16), L.ReLU(), L.Linear(16, 3))
    runner = PrecisionRunner(model, Precision("mixed_bfloat16"))
    assert runner.gemms is not None
    x = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    y = np.zeros(32, np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        dn.fit(model, dn.losses.SoftmaxCrossEntropy(), dn.optim.SGD(model.parameters(),
               lr=0.1), x, y, epochs=1, batch_size=16, progress=False,
               precision="mixed_bfloat16")


# ------------------------------------------------------------------ fallback

@pytest.fixture
def reloaded():
    """Run the loader again under the test's patches; forget that state after (the next
    use loads again, once the patches are undone)."""
    bf16_gemm._reset_for_tests()
    yield
    bf16_gemm._reset_for_tests()


def test_without_either_library_fit_falls_back_to_the_emulation_with_the_warning(
        monkeypatch, reloaded):
    monkeypatch.setenv(mkl.LIBRARY_VARIABLE, "")
    monkeypatch.setenv(onednn.LIBRARY_VARIABLE, "")
    monkeypatch.setattr(mixed_precision, "_warned", set())
    monkeypatch.setattr(bf16_gemm, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(bf16_gemm, "cpu_vendor", lambda: "GenuineIntel")
    ok, reason = bf16_gemm.availability()
    assert not ok and "libdnnl" in reason and "libmkl_rt" in reason
    assert "pip install 'dualnn[onednn]'" in reason
    be = dn.backend.NumpyBackend(fused=True)
    assert be.bfloat16_gemms() == (None, reason)
    with pytest.raises(RuntimeError, match="unavailable"):
        bf16_gemm.gemm(np.zeros((2, 2), np.uint16), np.zeros((2, 2), np.uint16))
    dn.seed(1)
    model = dn.Sequential(L.Linear(8, 16), L.ReLU(), L.Linear(16, 3))
    assert PrecisionRunner(model, Precision("mixed_bfloat16")).gemms is None
    x = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        with pytest.raises(PerformanceWarning, match="no bfloat16 GEMM: oneDNN"):
            dn.fit(model, dn.losses.SoftmaxCrossEntropy(), dn.optim.SGD(
                model.parameters(), lr=0.1), x, np.zeros(32, np.int64), epochs=1,
                batch_size=16, progress=False, precision="mixed_bfloat16")


def test_onednn_is_preferred_and_onemkl_serves_only_intel_cpus(monkeypatch, reloaded):
    monkeypatch.delenv(bf16_gemm.LIBRARY_VARIABLE, raising=False)
    monkeypatch.setattr(bf16_gemm, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(bf16_gemm, "cpu_vendor", lambda: "AuthenticAMD")
    has_onednn = onednn.find_library() is not None
    has_mkl = mkl.find_library() is not None
    ok, reason = bf16_gemm.availability()
    assert bf16_gemm.info()["name"] == ("onednn" if has_onednn else None)
    if not has_onednn:  # oneMKL is not tried on this CPU, and the reason says so
        assert not ok and "not used on this AuthenticAMD CPU" in reason
    monkeypatch.setenv(onednn.LIBRARY_VARIABLE, "")  # no oneDNN: Intel CPUs get oneMKL
    monkeypatch.setattr(bf16_gemm, "cpu_vendor", lambda: "GenuineIntel")
    bf16_gemm._reset_for_tests()
    ok, reason = bf16_gemm.availability()
    assert bf16_gemm.info()["name"] == ("mkl" if has_mkl else None)
    assert ok == has_mkl
    monkeypatch.setenv(bf16_gemm.LIBRARY_VARIABLE, "onednn")  # asked for, but missing
    bf16_gemm._reset_for_tests()
    ok, reason = bf16_gemm.availability()
    assert not ok and "libdnnl" in reason and "libmkl_rt" not in reason


def test_an_unknown_library_name_is_refused(monkeypatch, reloaded):
    monkeypatch.setattr(bf16_gemm, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setenv(bf16_gemm.LIBRARY_VARIABLE, "openblas")
    with pytest.raises(dn.errors.ConfigurationError, match="onednn, mkl.*'openblas'"):
        bf16_gemm.availability()


def test_cpu_without_bfloat16_units_falls_back(monkeypatch, reloaded):
    monkeypatch.setattr(bf16_gemm, "cpu_flags", lambda: {"avx2", "avx512f"})
    ok, reason = bf16_gemm.availability()
    assert not ok and "avx512_bf16" in reason and "amx_bf16" in reason


def test_fused_off_or_switched_off_means_no_gemms(monkeypatch):
    assert dn.backend.NumpyBackend(fused=False).bfloat16_gemms()[0] is None
    monkeypatch.setenv("DUALNN_BF16_GEMM", "0")
    gemms, why = dn.backend.NumpyBackend(fused=True).bfloat16_gemms()
    assert gemms is None and "DUALNN_BF16_GEMM" in why


def test_a_threading_layer_whose_runtime_is_missing_becomes_sequential(tmp_path):
    fake = str(tmp_path / "libmkl_rt.so.3")
    assert mkl.loadable_layer("sequential", fake) == "sequential"
    assert mkl.loadable_layer("nonexistent-runtime", fake) == "sequential"
    # libtbb is not on the linker's path here and not next to the fake library
    if mkl.loadable_layer("tbb", "/nonexistent/libmkl_rt.so") == "tbb":
        pytest.skip("libtbb.so.12 is on the dynamic linker's path")
    assert mkl.loadable_layer("tbb", fake) == "sequential"


# ------------------------------------------------------------------ thread policy

def test_mkl_policy_thread_count_and_overrides(monkeypatch):
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_THREADING_LAYER", raising=False)
    monkeypatch.delenv(_threads.FORCE_VARIABLE, raising=False)
    policy = _threads.mkl_policy()
    blas = [e["threads"] for e in _threads._state["openblas"].values() if e.get("threads")]
    assert policy["threads"] == (blas[0] if blas else _threads._cpu_count())
    assert policy["layer"] in _threads.MKL_LAYERS
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_THREADING_LAYER", "TBB")
    policy = _threads.mkl_policy()
    assert policy["threads"] == 1 and policy["layer"] == "tbb"
    monkeypatch.delenv("MKL_THREADING_LAYER")
    monkeypatch.setattr(_threads, "_numba_layer_for_mkl", lambda: "tbb")
    assert _threads.mkl_policy()["layer"] == "tbb"  # the pool Numba's kernels run on
    for numba_layer in ("omp", "workqueue", None):
        monkeypatch.setattr(_threads, "_numba_layer_for_mkl", lambda layer=numba_layer: layer)
        assert _threads.mkl_policy()["layer"] == "gnu"
    monkeypatch.setenv(_threads.FORCE_VARIABLE, "mkl_layer=sequential")
    assert _threads.mkl_policy()["layer"] == "sequential"
    monkeypatch.setenv(_threads.FORCE_VARIABLE, "mkl_layer=bogus")
    with pytest.raises(dn.errors.ConfigurationError, match="mkl_layer"):
        _threads.mkl_policy()


@needs_gemm
def test_gemm_uses_the_policy_threads_and_leaves_no_spinning_workers():
    info = bf16_gemm.info()
    assert info["threads"] == _threads.mkl_policy()["threads"]
    a = _bits(np.random.default_rng(0).standard_normal((512, 1024)))
    out = np.empty((512, 512), np.float32)
    for _ in range(3):
        bf16_gemm.gemm(a, a[:512].T, out=out)
    burned = []
    for _ in range(3):
        bf16_gemm.gemm(a, a[:512].T, out=out)
        c0 = time.process_time()
        time.sleep(0.1)
        burned.append(time.process_time() - c0)
    # one spinning worker would burn ~0.1 s of CPU in each 0.1 s sleep
    assert min(burned) < 0.03, burned


def test_info_reports_the_bfloat16_gemm():
    import io

    from dualnn import cli

    buf = io.StringIO()
    cli.cmd_info(None, buf)
    line = [row for row in buf.getvalue().splitlines() if row.startswith("bfloat16 GEMM")]
    assert len(line) == 1
    name = bf16_gemm.info()["name"]
    assert line[0].split()[3:5] == (["yes:", bf16_gemm.LIBRARY_NAMES[name]] if AVAILABLE
                                    else ["no:", REASON.split()[0]])
    if not AVAILABLE:
        assert REASON in line[0]


@needs_gemm
def test_buffers_of_the_last_step_are_reused_and_unused_ones_dropped():
    be = dn.backend.NumpyBackend(fused=True)
    gemms, _ = be.bfloat16_gemms()
    x = np.random.default_rng(4).standard_normal((6, 5)).astype(np.float32)
    gemms.begin_step([])
    with gemms.active():
        first = be.round_to_precision(x, "bfloat16")
    gemms.begin_step([])
    with gemms.active():
        again = be.round_to_precision(x + 1, "bfloat16")
        other = be.round_to_precision(x[:3].copy(), "bfloat16")
    assert np.shares_memory(first, again)  # the last step's buffer, rewritten
    np.testing.assert_array_equal(again, cast.round_bfloat16(np, x + 1))
    gemms.begin_step([])
    with gemms.active():
        reused = be.round_to_precision(x[:3].copy(), "bfloat16")  # no (6, 5) this step
    assert np.shares_memory(reused, other)
    gemms.begin_step([])
    with gemms.active():
        fresh = be.round_to_precision(x, "bfloat16")
    assert not np.shares_memory(fresh, again)  # dropped: unused in the step before
    np.testing.assert_array_equal(fresh, cast.round_bfloat16(np, x))


# ------------------------------------------------------------------ rounding left to readers

def _mixed_steps(monkeypatch, defer, model_fn, steps=3):
    from dualnn.training import mixed_precision as mp

    if not defer:
        monkeypatch.setattr(mp, "_rounds_on_load", lambda step, backward: False)
    dn.seed(0)
    model = model_fn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerformanceWarning)
        runner = PrecisionRunner(model, Precision("mixed_bfloat16"))
    opt = dn.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = dn.losses.SoftmaxCrossEntropy()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 20)).astype(np.float32) * 3 + 1
    y = rng.integers(0, 4, 64)
    defers = []
    real_defer = runner.gemms.defer
    runner.gemms.defer = lambda a: defers.append(a.shape) or real_defer(a)
    losses = []
    for _ in range(steps):
        losses.append(float(loss_fn.forward(runner.forward(x), y)))
        runner.backward(loss_fn.backward())
        opt.step()
        opt.zero_grad()
    monkeypatch.undo()
    return losses, [p.data.copy() for p in model.parameters()], defers


@needs_gemm
@pytest.mark.parametrize("bias", [False, True])
def test_rounding_left_to_gemms_and_batch_norm_changes_no_bit(monkeypatch, bias):
    """Deferring the rounding of arrays read only by GEMMs and batch norm (a bits-only pass
    at the GEMM, rounding on load in the kernels) gives bit-identical training."""
    def model():
        return dn.Sequential(L.Linear(20, 48, bias=bias), L.BatchNorm(48), L.ReLU(),
                             L.Linear(48, 48, bias=bias), L.BatchNorm(48), L.ReLU(),
                             L.Linear(48, 4))

    fast, fast_params, defers = _mixed_steps(monkeypatch, True, model)
    slow, slow_params, none = _mixed_steps(monkeypatch, False, model)
    assert not none
    assert fast == slow
    # per step: the input, 2 Linear outputs, 2 BN outputs (forward); 2 BN input gradients
    # read by bias-free Linears, 2 Linear input gradients read by BN (backward)
    assert len(defers) == 3 * (9 if not bias else 7), defers
    for p, q in zip(fast_params, slow_params):
        np.testing.assert_array_equal(p, q)


@needs_gemm
def test_rounding_left_to_fused_linear_activations_changes_no_bit(monkeypatch):
    """Without batch norm: Linear + activation blocks read their input only through the
    GEMMs (deferred), their output gradient through the activation (rounded)."""
    def model():
        return dn.Sequential(L.Linear(20, 40), L.ReLU(), L.Linear(40, 40), L.Tanh(),
                             L.Linear(40, 4))

    fast, fast_params, defers = _mixed_steps(monkeypatch, True, model)
    slow, slow_params, _ = _mixed_steps(monkeypatch, False, model)
    assert len(defers) == 3 * 3, defers  # per step: the input and the two blocks' outputs
    assert fast == slow
    for p, q in zip(fast_params, slow_params):
        np.testing.assert_array_equal(p, q)


@needs_gemm
def test_onednn_keeps_at_most_capacity_primitives_and_rebuilds_evicted_ones(monkeypatch):
    if onednn.library()[0] is None:
        pytest.skip(f"oneDNN: {onednn.info()['reason']}")
    matmul = onednn.Matmul()
    monkeypatch.setattr(matmul, "capacity", 2)
    rng = np.random.default_rng(9)
    shapes = [(3, 5, 4), (6, 2, 7), (4, 9, 3), (3, 5, 4)]  # the last one was evicted
    for m, k, n in shapes:
        a, b = _bits(rng.standard_normal((m, k))), _bits(rng.standard_normal((k, n)))
        out = np.full((m, n), 2.0, np.float32)
        matmul(a, b, out, (k, 1), (n, 1), 1.0)
        np.testing.assert_allclose(out, 2.0 + _reference(a, b), rtol=1e-5, atol=1e-5)
        assert len(matmul._primitives) <= 2
