"""CupyBackend's fused Numba-CUDA ops against the NumPy reference, on a real GPU.

Skipped cleanly where CuPy or a usable GPU is missing.
"""

from __future__ import annotations

import numpy as np
import pytest
from dualnn.kernels import reference

from tests.support.gpu import REQUIRES_GPU

pytestmark = REQUIRES_GPU

DTYPES = ["float32", "float64"]


@pytest.fixture(scope="module")
def backend():
    import warnings

    from numba.core.errors import NumbaPerformanceWarning

    from dualnn.backend.cupy_backend import CupyBackend

    with warnings.catch_warnings():
        warnings.simplefilter("error", NumbaPerformanceWarning)
        warnings.filterwarnings("ignore", "Grid size .* under-utilization")
        yield CupyBackend(0, fused=True)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _tol(dtype):
    return {"rtol": 2e-4, "atol": 2e-5} if dtype == "float32" else {"rtol": 1e-10, "atol": 1e-12}


def _host(backend, a):
    return backend.to_host(a)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (256, 1024), (1000, 37)])
@pytest.mark.parametrize("kind", reference.ACTIVATIONS)
def test_activations(backend, rng, dtype, shape, kind):
    z = (rng.standard_normal(shape) * 4).astype(dtype)
    z.flat[:5] = [0.0, np.inf, -np.inf, np.nan, 1e4][: z.size]
    b = rng.standard_normal(shape[1]).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    zd, bd, dyd = backend.asarray(z), backend.asarray(b), backend.asarray(dy)
    np.testing.assert_allclose(_host(backend, backend.bias_activation_forward(zd, bd, kind, 0.1)),
                               reference.bias_activation_forward(np, z, b, kind, 0.1),
                               **_tol(dtype))
    saved = reference.activation_forward(np, kind, z, 0.1) \
        if kind in reference.BACKWARD_FROM_OUTPUT else z
    saved = np.ascontiguousarray(saved)
    out = backend.activation_backward(kind, dyd, backend.asarray(saved), 0.1, out=dyd)
    assert out is dyd
    np.testing.assert_allclose(_host(backend, out),
                               reference.activation_backward(np, kind, dy, saved, 0.1),
                               **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 1), (16, 9), (256, 1024), (4096, 64)])
@pytest.mark.parametrize("relu", [False, True])
def test_batchnorm(backend, rng, dtype, shape, relu):
    _n, c = shape
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    gamma = (rng.standard_normal(c) + 1).astype(dtype)
    beta = rng.standard_normal(c).astype(dtype)
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    want = reference.batchnorm_forward_train(np, x, gamma, beta, rm, rv, 1e-5, 0.1, relu)
    d = [backend.asarray(a) for a in (x, gamma, beta, rm, rv)]
    y, mean, invstd = backend.batchnorm_forward_train(*d, 1e-5, 0.1, relu=relu)
    for got, exp in zip([y, mean, invstd, d[3], d[4]], want):
        np.testing.assert_allclose(_host(backend, got), exp, **_tol(dtype))
    dy = rng.standard_normal(shape).astype(dtype)
    want_b = reference.batchnorm_backward(np, dy, x, gamma, beta, _host(backend, mean),
                                          _host(backend, invstd), relu)
    got_b = backend.batchnorm_backward(backend.asarray(dy), d[0], d[1], d[2], mean, invstd,
                                       relu=relu)
    for got, exp in zip(got_b, want_b):
        np.testing.assert_allclose(_host(backend, got), exp, **_tol(dtype))
    again = backend.batchnorm_backward(backend.asarray(dy), d[0], d[1], d[2], mean, invstd,
                                       relu=relu)
    for a, b in zip(got_b, again):  # deterministic reductions
        assert np.array_equal(_host(backend, a), _host(backend, b))
    eval_got = backend.batchnorm_forward_eval(*d, 1e-5, relu=relu)
    np.testing.assert_allclose(
        _host(backend, eval_got),
        reference.batchnorm_forward_eval(np, x, gamma, beta, _host(backend, d[3]),
                                         _host(backend, d[4]), 1e-5, relu), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (128, 10), (1000, 1000)])
def test_softmax_cross_entropy(backend, rng, dtype, shape):
    logits = (rng.standard_normal(shape) * 5).astype(dtype)
    labels = rng.integers(0, shape[1], shape[0])
    loss, dlogits = backend.softmax_cross_entropy(backend.asarray(logits),
                                                  backend.asarray(labels))
    assert loss.shape == () and type(loss).__module__.startswith("cupy")
    want_loss, want_d = reference.softmax_cross_entropy(np, logits, labels)
    np.testing.assert_allclose(_host(backend, loss), want_loss, **_tol(dtype))
    np.testing.assert_allclose(_host(backend, dlogits), want_d, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizers(backend, rng, dtype):
    shape = (300, 70)
    g = rng.standard_normal(shape).astype(dtype)
    p = rng.standard_normal(shape).astype(dtype)
    cases = [
        ("sgd_update", 1, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "first_step": True}),
        ("adam_update", 2, {"step": 3, "lr": 1e-3, "weight_decay": 0.1, "decoupled": True}),
        ("rmsprop_update", 3, {"lr": 1e-2, "momentum": 0.5, "centered": True}),
        ("adagrad_update", 1, {"step": 2, "lr": 0.1, "lr_decay": 0.1}),
        ("adadelta_update", 2, {"weight_decay": 0.01}),
    ]
    for name, n_state, hyper in cases:
        state = [np.abs(rng.standard_normal(shape)).astype(dtype) * 0.1 for _ in range(n_state)]
        want = getattr(reference, name)(np, p, g, *state, **hyper)
        dev = [backend.asarray(a) for a in [p, g] + state]
        getattr(backend, name)(*dev, **hyper)
        outputs = [dev[0]] + dev[2:]
        for got, exp in zip(outputs, want):
            np.testing.assert_allclose(_host(backend, got), exp, **_tol(dtype), err_msg=name)


def test_runs_on_a_non_default_cupy_stream(backend, rng):
    import cupy

    x = rng.standard_normal((64, 32)).astype(np.float32)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        y = backend.bias_activation_forward(backend.asarray(x), None, "relu")
    stream.synchronize()
    np.testing.assert_allclose(backend.to_host(y), np.maximum(x, 0))
