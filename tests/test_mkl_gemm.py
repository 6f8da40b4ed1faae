"""float GEMMs through oneMKL (dualnn/backend/mkl_gemm.py) and the NumPy backend's use of them.

The comparisons run wherever oneMKL is installed (``pip install 'dualnn[mkl]'``, as CI
does); the fallback tests run everywhere.
"""

import numpy as np
import pytest

import dualnn as dn
from dualnn import layers as L
from dualnn.backend import NumpyBackend, mkl, mkl_gemm

AVAILABLE, REASON = mkl_gemm.availability()
needs_mkl = pytest.mark.skipif(not AVAILABLE, reason=f"oneMKL unavailable: {REASON}")

M, K, N = 160, 224, 192  # m*n*k above MIN_WORK
assert M * K * N >= mkl_gemm.MIN_WORK


def _layouts(a):
    """``a`` as C rows, as the transpose of C rows, and as a view with a longer row."""
    wide = np.zeros((a.shape[0], a.shape[1] + 7), a.dtype)
    wide[:, :a.shape[1]] = a
    return {"c": a, "t": np.ascontiguousarray(a.T).T, "ld": wide[:, :a.shape[1]]}


@needs_mkl
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("la", ["c", "t", "ld"])
@pytest.mark.parametrize("lb", ["c", "t", "ld"])
def test_gemm_matches_numpy_in_every_layout(dtype, la, lb):
    rng = np.random.default_rng(0)
    a = _layouts(rng.standard_normal((M, K)).astype(dtype))[la]
    b = _layouts(rng.standard_normal((K, N)).astype(dtype))[lb]
    assert mkl_gemm.takes(a, b)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    expected = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(mkl_gemm.gemm(a, b), expected, rtol=tol, atol=tol * 10)
    out = np.full((M, N), 2.0, dtype)
    assert mkl_gemm.gemm(a, b, out=out, beta=1.0) is out
    np.testing.assert_allclose(out, expected + 2.0, rtol=tol, atol=tol * 10)


@needs_mkl
def test_takes_only_what_cblas_reads_without_a_copy():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    assert mkl_gemm.takes(a, b, np.empty((M, N), np.float32))
    assert not mkl_gemm.takes(a, b.astype(np.float64))  # mixed dtypes
    assert not mkl_gemm.takes(a.astype(np.float16), b.astype(np.float16))
    assert not mkl_gemm.takes(a[:, ::2], b[::2])  # strided: no unit stride
    assert not mkl_gemm.takes(a[None], b)  # batched
    assert not mkl_gemm.takes(a[:8, :8], b[:8, :8])  # below MIN_WORK
    assert not mkl_gemm.takes(a, b[:-1])  # inner sizes differ
    assert not mkl_gemm.takes(a, b, np.empty((M, N), np.float64))
    assert not mkl_gemm.takes(a, b, np.empty((N, M), np.float32).T)  # out not C rows
    square = rng.standard_normal((K, K)).astype(np.float32)
    assert not mkl_gemm.takes(square, square, square)  # out overlaps an operand


@needs_mkl
def test_backend_routes_big_gemms_to_mkl_and_small_ones_to_numpy(monkeypatch):
    calls = []
    real = mkl_gemm.gemm
    monkeypatch.setattr(mkl_gemm, "gemm", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    backend = NumpyBackend(mkl_gemm=True)
    rng = np.random.default_rng(2)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    np.testing.assert_allclose(backend.matmul(a, b), a @ b, rtol=1e-4, atol=1e-3)
    out = np.ones((M, N), np.float32)
    backend.matmul_accumulate(a, b, out)
    np.testing.assert_allclose(out, a @ b + 1, rtol=1e-4, atol=1e-3)
    assert calls == [(M, K), (M, K)]
    backend.matmul(a[:4, :4], b[:4, :4])
    assert len(calls) == 2
    NumpyBackend(mkl_gemm=False).matmul(a, b)
    assert len(calls) == 2
    monkeypatch.setenv(mkl_gemm.SWITCH_VARIABLE, "0")
    assert not NumpyBackend().mkl_gemm
    monkeypatch.setenv(mkl_gemm.SWITCH_VARIABLE, "1")
    assert NumpyBackend().mkl_gemm


@pytest.mark.parametrize("vendor,switch,use", [
    ("GenuineIntel", None, True), ("AuthenticAMD", None, False), ("", None, False),
    ("AuthenticAMD", "1", True), ("GenuineIntel", "0", False), ("GenuineIntel", "off", False)])
def test_float_gemms_go_to_onemkl_on_intel_cpus_unless_switched(monkeypatch, vendor, switch,
                                                               use):
    monkeypatch.setattr(mkl_gemm, "cpu_vendor", lambda: vendor)
    if switch is None:
        monkeypatch.delenv(mkl_gemm.SWITCH_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(mkl_gemm.SWITCH_VARIABLE, switch)
    wanted, why = mkl_gemm.wanted()
    assert wanted == use and NumpyBackend().mkl_gemm == use
    if not use and switch is None:
        assert "slower than NumPy's BLAS" in why and "DUALNN_MKL_GEMM=1" in why


@needs_mkl
def test_a_training_step_agrees_with_numpys_blas(monkeypatch):
    """The same float64 step with and without oneMKL: every parameter agrees to rounding."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((256, 128))
    y = rng.integers(0, 10, 256)
    params = []
    real = mkl_gemm.gemm
    for use_mkl in (True, False):
        dn.seed(0)
        f64 = {"dtype": "float64"}
        model = dn.Sequential(L.Linear(128, 256, bias=False, **f64), L.BatchNorm(256, **f64),
                              L.ReLU(), L.Linear(256, 256, **f64), L.ReLU(),
                              L.Linear(256, 10, **f64))
        monkeypatch.setattr(model.backend, "mkl_gemm", use_mkl)
        calls = []
        monkeypatch.setattr(mkl_gemm, "gemm",
                            lambda *a, calls=calls, **k: calls.append(1) or real(*a, **k))
        opt = dn.optim.Adam(model.parameters(), lr=1e-2)
        loss_fn = dn.losses.SoftmaxCrossEntropy()
        for _ in range(3):
            loss_fn.forward(model.forward(x, training=True), y)
            model.backward(loss_fn.backward())
            opt.step()
            opt.zero_grad()
        assert bool(calls) == use_mkl
        params.append([p.data.copy() for p in model.parameters()])
    for ours, theirs in zip(*params):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_without_the_library_numpy_does_the_work(monkeypatch):
    monkeypatch.setenv(mkl.LIBRARY_VARIABLE, "")
    mkl._reset_for_tests()
    mkl_gemm._reset_for_tests()
    try:
        ok, reason = mkl_gemm.availability()
        assert not ok and "pip install" in reason and "mkl" in reason
        rng = np.random.default_rng(4)
        a = rng.standard_normal((M, K)).astype(np.float32)
        b = rng.standard_normal((K, N)).astype(np.float32)
        assert not mkl_gemm.takes(a, b)
        np.testing.assert_array_equal(NumpyBackend(mkl_gemm=True).matmul(a, b), a @ b)
        with pytest.raises(RuntimeError, match="unavailable"):
            mkl_gemm.gemm(a, b)
    finally:
        monkeypatch.delenv(mkl.LIBRARY_VARIABLE)
        mkl._reset_for_tests()
        mkl_gemm._reset_for_tests()
        from dualnn.backend import bf16_gemm

        bf16_gemm._reset_for_tests()
