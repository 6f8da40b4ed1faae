"""CudaSimBackend: the GPU backend's dispatch (CudaKernelOps) on NumPy arrays, end to end."""

from __future__ import annotations

import numpy as np
import pytest
from dualnn.kernels import reference

from dualnn.backend import ArrayAPIBackend
from dualnn.backend.cudasim_backend import CudaSimBackend


@pytest.fixture
def backend():
    return CudaSimBackend()


@pytest.fixture
def calls(monkeypatch):
    """Counts launcher calls made through the backend (proves the kernel path ran)."""
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


REFERENCE = ArrayAPIBackend(np)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_fused_op_runs_its_kernel_and_matches_reference(backend, calls, rng, dtype):
    tol = {"rtol": 2e-4, "atol": 2e-5} if dtype == "float32" else {"rtol": 1e-10, "atol": 1e-12}
    x = rng.standard_normal((6, 5)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    dy = rng.standard_normal((6, 5)).astype(dtype)
    for kind in ("relu", "elu", "sigmoid"):
        np.testing.assert_allclose(backend.activation_forward(kind, x, 1.0),
                                   REFERENCE.activation_forward(kind, x, 1.0), **tol)
        np.testing.assert_allclose(backend.bias_activation_forward(x, b, kind, 1.0),
                                   REFERENCE.bias_activation_forward(x, b, kind, 1.0), **tol)
        np.testing.assert_allclose(backend.activation_backward(kind, dy, x, 1.0),
                                   REFERENCE.activation_backward(kind, dy, x, 1.0), **tol)
    gamma, beta = (b + 2).copy(), b.copy()
    stats = [np.zeros(5, dtype), np.ones(5, dtype)]
    stats_ref = [a.copy() for a in stats]
    got = backend.batchnorm_forward_train(x, gamma, beta, *stats, 1e-5, 0.1, relu=True)
    want = REFERENCE.batchnorm_forward_train(x, gamma, beta, *stats_ref, 1e-5, 0.1, relu=True)
    for g, w in zip(list(got) + stats, list(want) + stats_ref):
        np.testing.assert_allclose(g, w, **tol)
    np.testing.assert_allclose(backend.batchnorm_forward_eval(x, gamma, beta, *stats, 1e-5),
                               REFERENCE.batchnorm_forward_eval(x, gamma, beta, *stats, 1e-5),
                               **tol)
    mean, invstd = got[1], got[2]
    for g, w in zip(backend.batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu=True),
                    REFERENCE.batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu=True)):
        np.testing.assert_allclose(g, w, **tol)
    labels = rng.integers(0, 5, 6)
    loss, dlogits = backend.softmax_cross_entropy(x, labels)
    loss_ref, dlogits_ref = REFERENCE.softmax_cross_entropy(x, labels)
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
        update(backend, mine)
        update(REFERENCE, theirs)
        np.testing.assert_allclose(mine, theirs, **tol, err_msg=name)
    assert set(calls) == {"activation_forward", "bias_activation_forward",
                          "activation_backward", "batchnorm_forward_train",
                          "batchnorm_forward_eval", "batchnorm_backward",
                          "softmax_cross_entropy", *states}


def test_unsupported_arrays_fall_back_to_reference(backend, calls, rng):
    """F-order, float16, mixed dtypes and wrong shapes run the reference: same results."""
    x = np.asfortranarray(rng.standard_normal((4, 3)))
    dy = rng.standard_normal((4, 3))
    np.testing.assert_allclose(backend.activation_backward("relu", dy, x),
                               reference.activation_backward(np, "relu", dy, x))
    h = rng.standard_normal((4, 3)).astype(np.float16)
    np.testing.assert_allclose(backend.bias_activation_forward(h, None, "relu"),
                               np.maximum(h, 0))
    x32 = rng.standard_normal((4, 3)).astype(np.float32)
    backend.activation_backward("relu", dy, x32)  # float64 dy, float32 saved
    p = rng.standard_normal(3)
    backend.sgd_update(p, rng.standard_normal(3).astype(np.float32), None, lr=0.1)
    assert calls == {}


def test_fused_off_never_launches(calls, rng):
    backend = CudaSimBackend(fused=False)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    backend.bias_activation_forward(x, None, "relu")
    backend.softmax_cross_entropy(x, np.array([0, 1, 2, 0]))
    assert calls == {}


def test_scratch_allocated_once_per_shape(backend, rng):
    x = rng.standard_normal((6, 4)).astype(np.float32)
    v = np.ones(4, np.float32)
    for _ in range(3):
        _y, mean, invstd = backend.batchnorm_forward_train(x, v, v * 0, v * 0, v.copy(), 1e-5,
                                                          0.1)
        backend.batchnorm_backward(x, x, v, v * 0, mean, invstd)
        backend.softmax_cross_entropy(x, np.array([0, 1, 2, 3, 0, 1]))
    assert len(backend._scratch_buffers) == 2  # one batch-norm, one per-row-loss buffer
    x20 = rng.standard_normal((20, 4)).astype(np.float32)  # 3 row slices: a new shape
    backend.batchnorm_forward_train(x20, v, v * 0, v * 0, v.copy(), 1e-5, 0.1)
    assert len(backend._scratch_buffers) == 3


def test_outputs_callers_keep_are_fresh(backend, rng):
    """Two batch-norm layers of one shape must not share mean/invstd/loss storage."""
    x1 = rng.standard_normal((6, 4)).astype(np.float32)
    x2 = rng.standard_normal((6, 4)).astype(np.float32)
    v = np.ones(4, np.float32)
    _, mean1, _ = backend.batchnorm_forward_train(x1, v, v * 0, v * 0, v.copy(), 1e-5, 0.1)
    saved = mean1.copy()
    backend.batchnorm_forward_train(x2, v, v * 0, v * 0, v.copy(), 1e-5, 0.1)
    assert np.array_equal(mean1, saved)
    loss1, _ = backend.softmax_cross_entropy(x1, np.zeros(6, np.int64))
    first = float(loss1)
    backend.softmax_cross_entropy(x2, np.ones(6, np.int64))
    assert float(loss1) == first


def test_in_place_out_arguments(backend, rng):
    dy = rng.standard_normal((5, 7)).astype(np.float32)
    z = rng.standard_normal((5, 7)).astype(np.float32)
    expected = reference.activation_backward(np, "leaky_relu", dy, z, 0.1)
    assert backend.activation_backward("leaky_relu", dy, z, 0.1, out=dy) is dy
    np.testing.assert_allclose(dy, expected, 1e-6)


def test_construction_without_simulator_is_a_clear_error(monkeypatch):
    from dualnn.errors import ConfigurationError

    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "0")
    with pytest.raises(ConfigurationError, match="NUMBA_ENABLE_CUDASIM=1"):
        CudaSimBackend()
