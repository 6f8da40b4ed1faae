"""Shared kernel machinery and dispatch: lazy Numba import, the cache-directory fallbacks,
serial/parallel builds, the backends' fused/unfused agreement, and the GPU backend's
dispatch (CudaKernelOps) end to end under the CUDA simulator.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from dualnn.kernels import cpu, reference
from dualnn.kernels import reference as R
from dualnn.kernels.batchnorm.cpu import _KERNELS as BN_KERNELS
from dualnn.kernels.softmax_xent.cpu import _KERNELS as XENT_KERNELS

import dualnn as dn
from dualnn.backend import ArrayAPIBackend, NumpyBackend
from tests.support.cudasim_backend import CudaSimBackend

from .cases import (
    CUDASIM,
)
from .cpu_cases import (
    DTYPES,
    FUSED,
    UNFUSED,
    assert_close,
    bn_inputs,
    rand,
)


def test_import_dualnn_does_not_import_numba():
    code = ("import dualnn, dualnn.kernels.cpu, sys; "
            "assert 'numba' not in sys.modules, 'numba imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cache_dir_reports_a_writable_directory():
    x = np.ones(3)
    cpu.activation_forward("relu", x, 0.0, out=np.empty_like(x))  # compiles, fills the cache
    path = cpu.cache_dir()
    assert path is not None and os.path.isdir(path)
    assert os.access(path, os.W_OK)


def _run_with_unwritable(tmp_path, writable_prefix):
    """Run a kernel in a subprocess where only paths under ``writable_prefix`` are writable."""
    code = textwrap.dedent(f"""
        import os, sys
        import numpy as np
        from dualnn.kernels import cpu
        prefix = {str(writable_prefix) if writable_prefix else None!r}
        from dualnn.kernels import _numba
        real = _numba._writable_dir
        _numba._writable_dir = lambda p: bool(prefix) and p.startswith(prefix) and real(p)
        x = np.array([-1.0, 2.0])
        out = cpu.activation_forward("relu", x, 0.0, out=np.empty_like(x))
        assert out.tolist() == [0.0, 2.0], out
        print(cpu.cache_dir())
        print(os.environ.get("NUMBA_CACHE_DIR"))
    """)
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    env.pop("NUMBA_CACHE_DIR", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True)
    return done.stdout.split("\n")[:2]


def test_cache_falls_back_to_user_cache_dir_when_package_is_read_only(tmp_path):
    reported, env_dir = _run_with_unwritable(tmp_path, tmp_path / "xdg")
    expected = str(tmp_path / "xdg" / "dualnn" / "numba")
    assert reported == expected and env_dir == expected
    files = [f for _, _, fs in os.walk(expected) for f in fs]
    assert any(f.endswith(".nbi") for f in files), files


def test_cache_disabled_when_nothing_is_writable(tmp_path):
    reported, env_dir = _run_with_unwritable(tmp_path, None)
    assert reported == "None" and env_dir == "None"


def test_parallel_and_serial_builds_are_bit_identical_and_deterministic():
    rng = np.random.default_rng(12)
    x, gamma, beta, rm, rv = bn_inputs(rng, (300, 37), np.float32)
    dy = rand(rng, x.shape, np.float32)
    mean = np.empty(37, np.float32)
    invstd = np.empty(37, np.float32)
    results = []
    for build in (0, 1, 1):
        size = 0 if build == 0 else np.inf
        ym = (np.empty_like(x), mean.copy(), invstd.copy(), rm.copy(), rv.copy())
        BN_KERNELS.get("batchnorm_forward_train", size)(x, gamma, beta, ym[3], ym[4], 1e-5, 0.1,
                                                     True, ym[0], ym[1], ym[2], False, True)
        back = (np.empty_like(x), np.empty(37, np.float32), np.empty(37, np.float32))
        BN_KERNELS.get("batchnorm_backward", size)(dy, x, gamma, beta, ym[1], ym[2], True,
                                                *back, False, True, True)
        d = np.empty_like(x)
        loss = np.empty(x.shape[0])
        XENT_KERNELS.get("softmax_cross_entropy", size)(x, np.arange(300) % 37, d, loss)
        results.append(ym + back + (d, loss))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_large_arrays_take_parallel_path_and_match_reference():
    rng = np.random.default_rng(13)
    n, c = 1024, cpu.PARALLEL_THRESHOLD // 1024
    x, gamma, beta, rm, rv = bn_inputs(rng, (n, c), np.float32)
    first = FUSED.batchnorm_forward_train(x, gamma, beta, rm.copy(), rv.copy(), 1e-5, 0.1)
    second = FUSED.batchnorm_forward_train(x, gamma, beta, rm.copy(), rv.copy(), 1e-5, 0.1)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    y = R.batchnorm_forward_train(np, x, gamma, beta, rm, rv, 1e-5, 0.1)[0]
    assert_close(first[0], y, np.float32)
    dy = rand(rng, (n, c), np.float32)
    got = FUSED.activation_backward("relu", dy, x)
    np.testing.assert_array_equal(got, R.activation_backward(np, "relu", dy, x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_and_unfused_backends_agree(dtype):
    rng = np.random.default_rng(14)
    x, gamma, beta, rm, rv = bn_inputs(rng, (65, 33), dtype)
    dy = rand(rng, x.shape, dtype)
    labels = rng.integers(0, 33, 65)
    ops = [
        lambda B: B.activation_forward("elu", x, 0.7),
        lambda B: B.bias_activation_forward(x, beta, "sigmoid"),
        lambda B: B.activation_backward("leaky_relu", dy, x, 0.01),
        lambda B: B.batchnorm_forward_train(x, gamma, beta, rm.copy(), rv.copy(), 1e-5, 0.1,
                                            True),
        lambda B: B.batchnorm_forward_eval(x, gamma, beta, rm, rv, 1e-5, True),
        lambda B: B.batchnorm_backward(dy, x, gamma, beta, rm, 1 / np.sqrt(rv), True),
        lambda B: B.softmax_cross_entropy(x, labels),
    ]
    for op in ops:
        got, want = op(FUSED), op(UNFUSED)
        got = got if isinstance(got, tuple) else (got,)
        want = want if isinstance(want, tuple) else (want,)
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.shape == w.shape
            assert_close(g, w, dtype, scale=float(np.abs(w).max()) * 10)


# ------------------------------------------------------------ CUDA simulator: GPU backend dispatch


@pytest.fixture
def sim_backend():
    return CudaSimBackend()


@pytest.fixture
def sim_calls(monkeypatch):
    """Counts launcher sim_calls made through the sim_backend (proves the kernel path ran)."""
    from dualnn.kernels import cuda as ck

    counts = {}
    for name in ("activation_forward", "bias_activation_forward", "activation_backward",
                 "batchnorm_forward_train", "batchnorm_forward_eval", "batchnorm_backward",
                 "softmax_cross_entropy", "sgd_update", "adam_update", "rmsprop_update",
                 "adagrad_update", "adadelta_update"):
        original = getattr(ck, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            counts[_name] = counts.get(_name, 0) + 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(ck, name, counted)
    return counts


SIM_REFERENCE = ArrayAPIBackend(np)


@CUDASIM
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cudasim_every_fused_op_runs_its_kernel_and_matches_reference(sim_backend, sim_calls, rng, dtype):
    tol = {"rtol": 2e-4, "atol": 2e-5} if dtype == "float32" else {"rtol": 1e-10, "atol": 1e-12}
    x = rng.standard_normal((6, 5)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    dy = rng.standard_normal((6, 5)).astype(dtype)
    for kind in ("relu", "elu", "sigmoid"):
        np.testing.assert_allclose(sim_backend.activation_forward(kind, x, 1.0),
                                   SIM_REFERENCE.activation_forward(kind, x, 1.0), **tol)
        np.testing.assert_allclose(sim_backend.bias_activation_forward(x, b, kind, 1.0),
                                   SIM_REFERENCE.bias_activation_forward(x, b, kind, 1.0), **tol)
        np.testing.assert_allclose(sim_backend.activation_backward(kind, dy, x, 1.0),
                                   SIM_REFERENCE.activation_backward(kind, dy, x, 1.0), **tol)
    gamma, beta = (b + 2).copy(), b.copy()
    stats = [np.zeros(5, dtype), np.ones(5, dtype)]
    stats_ref = [a.copy() for a in stats]
    got = sim_backend.batchnorm_forward_train(x, gamma, beta, *stats, 1e-5, 0.1, relu=True)
    want = SIM_REFERENCE.batchnorm_forward_train(x, gamma, beta, *stats_ref, 1e-5, 0.1, relu=True)
    for g, w in zip(list(got) + stats, list(want) + stats_ref):
        np.testing.assert_allclose(g, w, **tol)
    np.testing.assert_allclose(sim_backend.batchnorm_forward_eval(x, gamma, beta, *stats, 1e-5),
                               SIM_REFERENCE.batchnorm_forward_eval(x, gamma, beta, *stats, 1e-5),
                               **tol)
    mean, invstd = got[1], got[2]
    for g, w in zip(sim_backend.batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu=True),
                    SIM_REFERENCE.batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu=True)):
        np.testing.assert_allclose(g, w, **tol)
    labels = rng.integers(0, 5, 6)
    loss, dlogits = sim_backend.softmax_cross_entropy(x, labels)
    loss_ref, dlogits_ref = SIM_REFERENCE.softmax_cross_entropy(x, labels)
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == dtype
    np.testing.assert_allclose(loss, loss_ref, **tol)
    np.testing.assert_allclose(dlogits, dlogits_ref, **tol)
    p, g = rng.standard_normal(7).astype(dtype), rng.standard_normal(7).astype(dtype)
    states = {
        "sgd_update": (lambda B, p: B.sgd_update(p, g, np.zeros_like(p), lr=0.1, momentum=0.9,
                                                 first_step=True)),
        "adam_update": (lambda B, p: B.adam_update(p, g, np.zeros_like(p), np.zeros_like(p),
                                                   step=1, lr=0.1)),
        "rmsprop_update": (lambda B, p: B.rmsprop_update(p, g, np.zeros_like(p),
                                                         np.zeros_like(p), np.zeros_like(p),
                                                         lr=0.1, momentum=0.5, centered=True)),
        "adagrad_update": (lambda B, p: B.adagrad_update(p, g, np.zeros_like(p), step=1,
                                                         lr=0.1)),
        "adadelta_update": (lambda B, p: B.adadelta_update(p, g, np.zeros_like(p),
                                                           np.zeros_like(p))),
    }
    for name, update in states.items():
        mine, theirs = p.copy(), p.copy()
        update(sim_backend, mine)
        update(SIM_REFERENCE, theirs)
        np.testing.assert_allclose(mine, theirs, **tol, err_msg=name)
    assert set(sim_calls) == {"activation_forward", "bias_activation_forward",
                          "activation_backward", "batchnorm_forward_train",
                          "batchnorm_forward_eval", "batchnorm_backward",
                          "softmax_cross_entropy", *states}


@CUDASIM
def test_cudasim_unsupported_arrays_fall_back_to_reference(sim_backend, sim_calls, rng):
    """F-order, a float16 bias (not a float32 master weight), mixed dtypes and wrong shapes
    run the reference: same results."""
    x = np.asfortranarray(rng.standard_normal((4, 3)))
    dy = rng.standard_normal((4, 3))
    np.testing.assert_allclose(sim_backend.activation_backward("relu", dy, x),
                               reference.activation_backward(np, "relu", dy, x))
    h = rng.standard_normal((4, 3)).astype(np.float16)
    np.testing.assert_allclose(sim_backend.bias_activation_forward(h, h[0].copy(), "relu"),
                               np.maximum(h + h[0], 0))
    x32 = rng.standard_normal((4, 3)).astype(np.float32)
    sim_backend.activation_backward("relu", dy, x32)  # float64 dy, float32 saved
    p = rng.standard_normal(3)
    sim_backend.sgd_update(p, rng.standard_normal(3).astype(np.float32), None, lr=0.1)
    assert sim_calls == {}


@CUDASIM
def test_cudasim_fused_off_never_launches(sim_calls, rng):
    sim_backend = CudaSimBackend(fused=False)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    sim_backend.bias_activation_forward(x, None, "relu")
    sim_backend.softmax_cross_entropy(x, np.array([0, 1, 2, 0]))
    assert sim_calls == {}


@CUDASIM
def test_cudasim_scratch_allocated_once_per_shape(sim_backend, rng):
    x = rng.standard_normal((6, 4)).astype(np.float32)
    v = np.ones(4, np.float32)
    counts = []
    for _ in range(3):
        _y, mean, invstd = sim_backend.batchnorm_forward_train(x, v, v * 0, v * 0, v.copy(), 1e-5,
                                                          0.1)
        sim_backend.batchnorm_backward(x, x, v, v * 0, mean, invstd)
        sim_backend.softmax_cross_entropy(x, np.array([0, 1, 2, 3, 0, 1]))
        counts.append(len(sim_backend._scratch_buffers))
    assert counts[0] >= 2 and counts == [counts[0]] * 3  # allocated on the first call only
    x20 = rng.standard_normal((20, 4)).astype(np.float32)  # 3 row slices: a new shape
    sim_backend.batchnorm_forward_train(x20, v, v * 0, v * 0, v.copy(), 1e-5, 0.1)
    assert len(sim_backend._scratch_buffers) == counts[0] + 1


@CUDASIM
def test_cudasim_outputs_callers_keep_are_fresh(sim_backend, rng):
    """Two batch-norm layers of one shape must not share mean/invstd/loss storage."""
    x1 = rng.standard_normal((6, 4)).astype(np.float32)
    x2 = rng.standard_normal((6, 4)).astype(np.float32)
    v = np.ones(4, np.float32)
    _, mean1, _ = sim_backend.batchnorm_forward_train(x1, v, v * 0, v * 0, v.copy(), 1e-5, 0.1)
    saved = mean1.copy()
    sim_backend.batchnorm_forward_train(x2, v, v * 0, v * 0, v.copy(), 1e-5, 0.1)
    assert np.array_equal(mean1, saved)
    loss1, _ = sim_backend.softmax_cross_entropy(x1, np.zeros(6, np.int64))
    first = float(loss1)
    sim_backend.softmax_cross_entropy(x2, np.ones(6, np.int64))
    assert float(loss1) == first


@CUDASIM
def test_cudasim_in_place_out_arguments(sim_backend, rng):
    dy = rng.standard_normal((5, 7)).astype(np.float32)
    z = rng.standard_normal((5, 7)).astype(np.float32)
    expected = reference.activation_backward(np, "leaky_relu", dy, z, 0.1)
    assert sim_backend.activation_backward("leaky_relu", dy, z, 0.1, out=dy) is dy
    np.testing.assert_allclose(dy, expected, 1e-6)


@CUDASIM
def test_cudasim_construction_without_simulator_is_a_clear_error(monkeypatch):
    from dualnn.errors import ConfigurationError

    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "0")
    with pytest.raises(ConfigurationError, match="NUMBA_ENABLE_CUDASIM=1"):
        CudaSimBackend()


# ------------------------------------------------------------ CUDA simulator: a tiny model trains


def _sim_train(backend, x_host, y_host, steps, dtype):
    with dn.use_backend(backend):
        dn.seed(7)
        model = dn.Sequential(
            # no bias before batch norm: its true gradient is 0, and Adam would turn the
            # rounding noise of that 0 into lr-sized steps that differ between backends
            dn.layers.Linear(5, 8, bias=False, dtype=dtype),
            dn.layers.BatchNorm(8, dtype=dtype),
            dn.layers.ReLU(),
            dn.layers.Linear(8, 3, dtype=dtype),
            dn.layers.Sigmoid(),
            dn.layers.Linear(3, 3, dtype=dtype),
        )
        loss_fn = dn.losses.SoftmaxCrossEntropy()
        opt = dn.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
        x = backend.asarray(x_host, dtype)
        y = backend.asarray(y_host)
        losses = []
        for _ in range(steps):
            logits = model.forward(x, training=True)
            losses.append(float(loss_fn.forward(logits, y)))
            model.backward(loss_fn.backward())
            opt.step()
            opt.zero_grad()
        params = [backend.to_host(p.data).copy() for p in model.parameters()]
        running = [backend.to_host(b).copy() for b in (model[1].running_mean,
                                                       model[1].running_var)]
        eval_out = backend.to_host(model.forward(x, training=False)).copy()
    return losses, params, running, eval_out


@CUDASIM
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cudasim_tiny_model_matches_numpy(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 5))
    y = rng.integers(0, 3, 12)
    sim = _sim_train(CudaSimBackend(), x, y, 4, dtype)
    ref = _sim_train(NumpyBackend(fused=False), x, y, 4, dtype)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == "float32" else {"rtol": 1e-9, "atol": 1e-11}
    np.testing.assert_allclose(sim[0], ref[0], **tol)
    assert sim[0][-1] < sim[0][0]  # it learns
    for a, b in zip(sim[1] + sim[2] + [sim[3]], ref[1] + ref[2] + [ref[3]]):
        np.testing.assert_allclose(a, b, **tol)
    from dualnn.kernels import cuda as ck

    launched = {name for family in ck.FAMILIES.values()
                for name, kernel_dtype, _ in family._compiled if kernel_dtype == dtype}
    assert {"batchnorm_forward_partial", "batchnorm_backward_apply", "batchnorm_forward_eval",
            "softmax_cross_entropy_rows", "adam_update", "activation_backward",
            "bias_activation_forward"} <= launched


# ------------------------------------------------------------ launch grids sized from the device


class _FakeDevice:
    def __init__(self, sms):
        self.MULTIPROCESSOR_COUNT = sms


@pytest.fixture
def fake_gpu(monkeypatch):
    """``_cuda`` believing it drives a GPU with 132 SMs (an H100 SXM); counts the asks."""
    from dualnn.kernels import _cuda

    asks = []

    class FakeCuda:
        @staticmethod
        def get_current_device():
            asks.append(1)
            return _FakeDevice(132)

    monkeypatch.setattr(_cuda, "_sm_count", None)
    monkeypatch.setattr(_cuda, "_cuda", FakeCuda)
    monkeypatch.setattr(_cuda, "simulator_enabled", lambda: False)
    saved = dict(vars(_cuda.config))
    yield _cuda, asks
    for key, value in saved.items():
        setattr(_cuda.config, key, value)


def test_multiprocessor_count_is_read_once(fake_gpu):
    _cuda, asks = fake_gpu
    assert _cuda.multiprocessor_count() == 132
    assert _cuda.multiprocessor_count() == 132
    assert len(asks) == 1


def test_grid_stride_fills_the_device_then_loops(fake_gpu):
    _cuda, _ = fake_gpu
    _cuda.config.max_blocks = 10**9
    wave = 132 * _cuda.config.blocks_per_sm
    assert _cuda.grid_stride(1) == (1, 1)
    assert _cuda.grid_stride(1000) == (4, 256)
    assert _cuda.grid_stride(wave * 256) == (wave, 256)
    assert _cuda.grid_stride(wave * 256 + 1) == (wave, 256)  # one full wave, threads loop
    assert _cuda.grid_stride(10**9) == (wave, 256)
    assert _cuda.grid_stride(100 * 32, threads=64) == (50, 64)
    _cuda.config.blocks_per_sm = 2
    assert _cuda.grid_stride(10**9) == (264, 256)
    _cuda.config.max_blocks = 7  # an explicit cap still wins
    assert _cuda.grid_stride(10**9) == (7, 256)


def test_simulator_uses_a_fixed_small_count(monkeypatch):
    from dualnn.kernels import _cuda

    def no_device():
        raise AssertionError("the simulator has no device to ask")

    monkeypatch.setattr(_cuda, "_sm_count", None)
    monkeypatch.setattr(_cuda, "simulator_enabled", lambda: True)
    monkeypatch.setattr(_cuda, "numba_cuda", no_device)
    assert _cuda.multiprocessor_count() == _cuda.SIMULATOR_SM_COUNT


def test_simulator_shuffle_is_xor_only():
    from dualnn.kernels import _cuda

    with pytest.raises(NotImplementedError, match="xor"):
        _cuda.simulator_shfl_sync(0xFFFFFFFF, 0, 1.0, 1, 31)
