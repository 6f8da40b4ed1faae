"""The Numba kernels of dualnn.kernels.cpu against their reference twins.

Every kernel is compared with :mod:`dualnn.kernels.reference` on many shapes (1x1, batch
of 1, odd sizes, a larger block), float32 and float64, edge values (0, +-inf, NaN, huge
magnitudes), through the kernel API and through :class:`NumpyBackend` (fused and unfused,
including the non-contiguous fallback and in-place aliasing), plus batch-norm stability,
determinism, lazy Numba import and the cache-directory fallbacks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dualnn.backend import NumpyBackend
from dualnn.errors import ShapeError
from dualnn.kernels import cpu
from dualnn.kernels import reference as R

settings.register_profile("cpu_kernels", deadline=None, max_examples=25, derandomize=True)
PROFILE = settings.get_profile("cpu_kernels")

DTYPES = [np.float32, np.float64]
SHAPES = [(1, 1), (1, 7), (7, 13), (33, 65), (257, 129)]
KINDS = list(R.ACTIVATIONS)
EDGE = [0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30, 20.0, -20.0, 88.0, -88.0, 1e4, -1e4, 1e30,
        -1e30, np.inf, -np.inf, np.nan]
FUSED = NumpyBackend(fused=True)
UNFUSED = NumpyBackend(fused=False)


def tol(dtype):
    return 1e-12 if np.dtype(dtype) == np.float64 else 1e-5


def assert_close(actual, expected, dtype, scale=None):
    """Relative ``tol(dtype)`` with an absolute floor of ``tol * scale`` (default max|expected|)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape
    finite = np.isfinite(expected)
    if scale is None:
        scale = float(np.max(np.abs(expected[finite]), initial=1.0))
    t = tol(dtype)
    np.testing.assert_allclose(actual, expected, rtol=t, atol=t * max(scale, 1.0),
                               equal_nan=True)


def rand(rng, shape, dtype, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(dtype)


def saved_for(kind, z):
    """What the backward pass receives: the input for relu/leaky/elu, the output otherwise."""
    if kind in R.BACKWARD_FROM_OUTPUT:
        return np.asarray(R.activation_forward(np, kind, z, 0.1)).astype(z.dtype)
    return z


# ------------------------------------------------------------------ import / cache

def test_import_dualnn_does_not_import_numba():
    code = ("import dualnn, dualnn.kernels.cpu, sys; "
            "assert 'numba' not in sys.modules, 'numba imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cache_dir_reports_a_writable_directory():
    x = np.ones(3)
    cpu.activation_forward("relu", x, 0.0, np.empty_like(x))  # compiles, fills the cache
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
        real = cpu._writable_dir
        cpu._writable_dir = lambda p: bool(prefix) and p.startswith(prefix) and real(p)
        x = np.array([-1.0, 2.0])
        out = cpu.activation_forward("relu", x, 0.0, np.empty_like(x))
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


# ------------------------------------------------------------------ activations

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_activation_forward_backward_match_reference(shape, kind, dtype):
    rng = np.random.default_rng(hash((shape, kind)) % 2**32)
    z = rand(rng, shape, dtype, 3.0)
    b = rand(rng, shape[1], dtype)
    dy = rand(rng, shape, dtype)
    alpha = 0.1

    out = cpu.activation_forward(kind, z, alpha, np.empty_like(z))
    assert_close(out, R.activation_forward(np, kind, z, alpha), dtype)
    out = cpu.bias_activation_forward(z, b, kind, alpha, np.empty_like(z))
    assert_close(out, R.bias_activation_forward(np, z, b, kind, alpha), dtype)
    saved = saved_for(kind, z)
    out = cpu.activation_backward(kind, dy, saved, alpha, np.empty_like(z))
    assert_close(out, R.activation_backward(np, kind, dy, saved, alpha), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_activation_edge_values(kind, dtype):
    z = np.array(EDGE, dtype=dtype)
    with np.errstate(all="ignore"):
        expected = R.activation_forward(np, kind, z, 0.5)
    got = cpu.activation_forward(kind, z, 0.5, np.empty_like(z))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert_close(got, expected, dtype, scale=1.0)
    dy = np.linspace(-2, 2, z.size).astype(dtype)
    dy[3] = np.inf
    saved = z if kind not in ("sigmoid", "tanh") else np.clip(got, -1, 1).astype(dtype)
    with np.errstate(all="ignore"):
        expected = R.activation_backward(np, kind, dy, saved, 0.5)
    got = cpu.activation_backward(kind, dy, saved, 0.5, np.empty_like(z))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert_close(got, expected, dtype, scale=1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_tanh_elu_do_not_overflow(dtype):
    z = np.array([1e4, -1e4, 3e38, -3e38, np.inf, -np.inf], dtype=dtype)
    sig = cpu.activation_forward("sigmoid", z, 0.0, np.empty_like(z))
    np.testing.assert_array_equal(sig, np.array([1, 0, 1, 0, 1, 0], dtype=dtype))
    th = cpu.activation_forward("tanh", z, 0.0, np.empty_like(z))
    np.testing.assert_array_equal(th, np.array([1, -1, 1, -1, 1, -1], dtype=dtype))
    elu = cpu.activation_forward("elu", z, 1.0, np.empty_like(z))
    np.testing.assert_array_equal(elu, np.array([1e4, -1, 3e38, -1, np.inf, -1], dtype=dtype))
    dy = np.ones_like(z)
    delu = cpu.activation_backward("elu", dy, z, 1.0, np.empty_like(z))
    np.testing.assert_array_equal(delu, np.array([1, 0, 1, 0, 1, 0], dtype=dtype))


@pytest.mark.parametrize("kind", ["relu", "leaky_relu", "elu"])
def test_kink_derivatives_follow_pytorch(kind):
    z = np.zeros(3)
    got = cpu.activation_backward(kind, np.ones(3), z, 0.25, np.empty(3))
    expected = {"relu": 0.0, "leaky_relu": 0.25, "elu": 0.25}[kind]
    np.testing.assert_array_equal(got, expected)


@settings(PROFILE)
@given(data=st.data(), kind=st.sampled_from(KINDS), dtype=st.sampled_from(DTYPES),
       n=st.integers(1, 40), c=st.integers(1, 40))
def test_activations_hypothesis(data, kind, dtype, n, c):
    values = st.floats(-1e4, 1e4, allow_nan=False, width=32)
    z = np.array(data.draw(st.lists(values, min_size=n * c, max_size=n * c)),
                 dtype=dtype).reshape(n, c)
    b = np.array(data.draw(st.lists(values, min_size=c, max_size=c)), dtype=dtype)
    with np.errstate(all="ignore"):
        expected = R.bias_activation_forward(np, z, b, kind, 0.3)
        z_before = z.copy()
        got = FUSED.bias_activation_forward(z, b, kind, 0.3)
    assert_close(got, expected, dtype, scale=1.0)
    np.testing.assert_array_equal(z, z_before)  # out of place: the input is untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_activation_in_place_aliasing(kind, dtype):
    rng = np.random.default_rng(1)
    z = rand(rng, (33, 65), dtype)
    b = rand(rng, 65, dtype)
    dy = rand(rng, (33, 65), dtype)
    saved = saved_for(kind, z)
    expected = R.activation_backward(np, kind, dy, saved, 0.2)
    buf = dy.copy()
    assert FUSED.activation_backward(kind, buf, saved, 0.2, out=buf) is buf
    assert_close(buf, expected, dtype)
    expected = R.bias_activation_forward(np, z, b, kind, 0.2)
    zz = z.copy()
    assert FUSED.bias_activation_forward(zz, b, kind, 0.2, out=zz) is zz
    assert_close(zz, expected, dtype)


@pytest.mark.parametrize("kind", KINDS)
def test_non_contiguous_and_other_dtypes_fall_back(kind):
    rng = np.random.default_rng(2)
    base = rand(rng, (16, 30), np.float64)
    views = [base[:, ::2], base.T, np.asfortranarray(base), base.astype(np.float16)]
    for z in views:
        expected = R.activation_forward(np, kind, z, 0.1)
        got = FUSED.activation_forward(kind, z, 0.1)
        np.testing.assert_allclose(got, expected, rtol=1e-3 if z.dtype == np.float16 else 1e-12)
        saved = saved_for(kind, z)
        dy = np.ones_like(z)
        got = FUSED.activation_backward(kind, dy, saved, 0.1, out=np.empty_like(z))
        np.testing.assert_allclose(got, R.activation_backward(np, kind, dy, saved, 0.1),
                                   rtol=1e-3 if z.dtype == np.float16 else 1e-12)
    # mixed dtypes fall back too
    z32 = base.astype(np.float32)
    b64 = np.ones(30)
    got = FUSED.bias_activation_forward(z32, b64, kind, 0.1)
    np.testing.assert_allclose(got, R.bias_activation_forward(np, z32, b64, kind, 0.1),
                               rtol=1e-6)


def test_kernel_api_rejects_bad_arrays():
    x = np.ones((4, 6), np.float32)
    with pytest.raises(ValueError):
        cpu.activation_backward("relu", x, x[:, ::2], 0.0, np.empty_like(x))
    with pytest.raises(ValueError):
        cpu.activation_backward("relu", x, x.astype(np.float64), 0.0, np.empty_like(x))
    with pytest.raises(ValueError):
        cpu.bias_activation_forward(x, np.ones(5, np.float32), "relu", 0.0, np.empty_like(x))
    with pytest.raises(ValueError):
        cpu.activation_forward("swish", x, 0.0, np.empty_like(x))
    with pytest.raises(ValueError):
        cpu.activation_forward("relu", x.astype(np.int32), 0.0, np.empty((4, 6), np.int32))


# ------------------------------------------------------------------ batch norm

BN_SHAPES = [(2, 1), (7, 13), (33, 65), (257, 129)]


def bn_inputs(rng, shape, dtype):
    n, c = shape
    x = rand(rng, shape, dtype, 2.0) + rand(rng, c, dtype)
    gamma = (1 + 0.5 * rng.standard_normal(c)).astype(dtype)
    beta = rand(rng, c, dtype)
    rm = rand(rng, c, dtype)
    rv = (1 + rng.random(c)).astype(dtype)
    return x, gamma, beta, rm, rv


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_forward_train_matches_reference(shape, dtype, relu):
    rng = np.random.default_rng(3)
    x, gamma, beta, rm, rv = bn_inputs(rng, shape, dtype)
    y, mean, invstd, erm, erv = R.batchnorm_forward_train(np, x, gamma, beta, rm, rv, 1e-5,
                                                          0.1, relu)
    rm2, rv2 = rm.copy(), rv.copy()
    out, m2, s2 = FUSED.batchnorm_forward_train(x, gamma, beta, rm2, rv2, 1e-5, 0.1, relu)
    for got, want in ((out, y), (m2, mean), (s2, invstd), (rm2, erm), (rv2, erv)):
        assert got.dtype == dtype
        assert_close(got, want, dtype)
    # in place on x (its own loop in the kernel): bit-identical to the out-of-place call
    xx, rm3, rv3 = x.copy(), rm.copy(), rv.copy()
    got, _, _ = FUSED.batchnorm_forward_train(xx, gamma, beta, rm3, rv3, 1e-5, 0.1, relu, out=xx)
    assert got is xx
    np.testing.assert_array_equal(xx, out)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 9)] + BN_SHAPES)
def test_batchnorm_forward_eval_matches_reference(shape, dtype, relu):
    rng = np.random.default_rng(4)
    x, gamma, beta, rm, rv = bn_inputs(rng, shape, dtype)
    expected = R.batchnorm_forward_eval(np, x, gamma, beta, rm, rv, 1e-5, relu)
    assert_close(FUSED.batchnorm_forward_eval(x, gamma, beta, rm, rv, 1e-5, relu), expected,
                 dtype)
    xx = x.copy()
    assert FUSED.batchnorm_forward_eval(xx, gamma, beta, rm, rv, 1e-5, relu, out=xx) is xx
    assert_close(xx, expected, dtype)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batchnorm_backward_matches_reference(shape, dtype, relu):
    rng = np.random.default_rng(5)
    x, gamma, beta, rm, rv = bn_inputs(rng, shape, dtype)
    _, mean, invstd, _, _ = R.batchnorm_forward_train(np, x, gamma, beta, rm, rv, 1e-5, 0.1)
    dy = rand(rng, shape, dtype)
    # float64 truth from the same (rounded) inputs: the float32 reference sums in float32
    up = [a.astype(np.float64) for a in (dy, x, gamma, beta, mean, invstd)]
    edx, edg, edb = R.batchnorm_backward(np, *up, relu)
    dx, dg, db = FUSED.batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu)
    for got, want in ((dx, edx), (dg, edg), (db, edb)):
        assert got.dtype == dtype
        assert_close(got, want, dtype, scale=float(np.abs(want).max()) * 10
                     if dtype == np.float32 else None)
    # out aliasing dy gives the same result
    buf = dy.copy()
    dx2, dg2, db2 = FUSED.batchnorm_backward(buf, x, gamma, beta, mean, invstd, relu, out=buf)
    assert dx2 is buf
    np.testing.assert_array_equal(dx2, dx)
    np.testing.assert_array_equal(dg2, dg)


def test_batchnorm_train_stable_for_large_mean_float32():
    rng = np.random.default_rng(6)
    n, c = 256, 64
    x = (1e4 + 1e-2 * rng.standard_normal((n, c))).astype(np.float32)
    gamma = np.ones(c, np.float32)
    beta = np.zeros(c, np.float32)
    rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)
    y, mean, invstd = FUSED.batchnorm_forward_train(x, gamma, beta, rm, rv, 1e-8, 0.1)
    x64 = x.astype(np.float64)
    true_mean = x64.mean(axis=0)
    true_var = x64.var(axis=0)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(true_var + 1e-8), rtol=1e-5)
    np.testing.assert_allclose(mean, true_mean, rtol=1e-7)
    np.testing.assert_allclose(rv, 0.9 + 0.1 * true_var * n / (n - 1), rtol=1e-6)
    # normalized output: as exact as float32 allows (centered on x[0], not on a rounded mean)
    want = (x64 - true_mean) / np.sqrt(true_var + 1e-8)
    np.testing.assert_allclose(y, want, atol=1e-4)
    np.testing.assert_allclose(y.astype(np.float64).std(axis=0), 1.0, rtol=1e-4)
    assert np.all(np.abs(y.astype(np.float64).mean(axis=0)) <= 1e-5)


def test_batchnorm_nan_and_inf_propagate_like_reference():
    rng = np.random.default_rng(7)
    x, gamma, beta, rm, rv = bn_inputs(rng, (9, 4), np.float64)
    x[3, 1] = np.nan
    x[0, 2] = np.inf
    with np.errstate(all="ignore"):
        y, mean, invstd, _, _ = R.batchnorm_forward_train(np, x, gamma, beta, rm, rv, 1e-5, 0.1)
        out, m2, s2 = FUSED.batchnorm_forward_train(x, gamma, beta, rm.copy(), rv.copy(), 1e-5,
                                                    0.1)
    for got, want in ((out, y), (m2, mean), (s2, invstd)):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert_close(out[:, [0, 3]], y[:, [0, 3]], np.float64)


def test_batchnorm_batch_of_one_falls_back_like_reference():
    x = np.ones((1, 3))
    for backend in (FUSED, UNFUSED):
        with pytest.raises(ZeroDivisionError):
            backend.batchnorm_forward_train(x, np.ones(3), np.zeros(3), np.zeros(3),
                                            np.ones(3), 1e-5, 0.1)


def test_batchnorm_non_contiguous_falls_back():
    rng = np.random.default_rng(8)
    x, gamma, beta, rm, rv = bn_inputs(rng, (20, 12), np.float32)
    xs = np.asfortranarray(x)
    y, mean, invstd, _, _ = R.batchnorm_forward_train(np, xs, gamma, beta, rm, rv, 1e-5, 0.1)
    out, m2, s2 = FUSED.batchnorm_forward_train(xs, gamma, beta, rm.copy(), rv.copy(), 1e-5,
                                                0.1)
    np.testing.assert_array_equal(out, y)
    dy = rand(rng, (12, 20), np.float32).T
    ref = R.batchnorm_backward(np, dy, x, gamma, beta, mean, invstd)
    got = FUSED.batchnorm_backward(dy, x, gamma, beta, mean, invstd)
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g, r)


# ------------------------------------------------------------------ softmax cross-entropy

@pytest.mark.parametrize("label_dtype", [np.int64, np.int32])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 10), (7, 13), (33, 65), (257, 129)])
def test_softmax_cross_entropy_matches_reference(shape, dtype, label_dtype):
    rng = np.random.default_rng(9)
    logits = rand(rng, shape, dtype, 5.0)
    labels = rng.integers(0, shape[1], shape[0]).astype(label_dtype)
    loss, dlogits = R.softmax_cross_entropy(np, logits, labels)
    got_loss, got_d = FUSED.softmax_cross_entropy(logits, labels)
    assert isinstance(got_loss, np.ndarray) and got_loss.shape == () and got_loss.dtype == dtype
    assert got_d.dtype == dtype
    assert_close(got_loss, loss, dtype)
    assert_close(got_d, dlogits, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_extreme_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 3e4], [np.nan, 0.0, 1.0],
                       [np.inf, 0.0, 1.0]], dtype=dtype)
    labels = np.array([0, 1, 2, 1])
    with np.errstate(all="ignore"):
        _, ref_d = R.softmax_cross_entropy(np, logits, labels)
    loss, d = FUSED.softmax_cross_entropy(logits, labels)
    np.testing.assert_array_equal(np.isnan(d), np.isnan(ref_d))
    assert_close(d[:2], ref_d[:2], dtype)
    assert np.isnan(loss)
    loss2, _ = FUSED.softmax_cross_entropy(logits[:2], labels[:2])
    with np.errstate(all="ignore"):
        ref_loss2, _ = R.softmax_cross_entropy(np, logits[:2], labels[:2])
    assert_close(loss2, ref_loss2, dtype)  # (0 + 2e4) / 2


def test_softmax_cross_entropy_rejects_out_of_range_labels():
    logits = np.zeros((3, 4), np.float32)
    for bad in ([0, 4, 1], [-1, 0, 0]):
        with pytest.raises(ShapeError):
            FUSED.softmax_cross_entropy(logits, np.array(bad))
        with pytest.raises(ValueError):
            cpu.softmax_cross_entropy(logits, np.array(bad), np.empty_like(logits))


# ------------------------------------------------------------------ optimizers

OPT_SHAPES = [(), (1,), (7, 13), (33, 65), (3, 4, 5)]


def _state(rng, shape, dtype, positive=False):
    a = rng.standard_normal(shape)
    return np.asarray(np.abs(a) if positive else a).astype(dtype)


def _run_optimizer(name, rng, shape, dtype, hyper, steps=3):
    """Run ``steps`` updates on the fused backend and the reference; return both states."""
    param = _state(rng, shape, dtype)
    grads = [_state(rng, shape, dtype) for _ in range(steps)]
    if name == "sgd":
        states = [_state(rng, shape, dtype)]
    elif name == "adam":
        states = [_state(rng, shape, dtype), _state(rng, shape, dtype, True)]
    elif name == "rmsprop":
        states = [_state(rng, shape, dtype, True), _state(rng, shape, dtype),
                  np.asarray(0.01 * _state(rng, shape, dtype))]
    elif name == "adagrad":
        states = [_state(rng, shape, dtype, True)]
    else:
        states = [_state(rng, shape, dtype, True), _state(rng, shape, dtype, True)]
    ref = [param.copy()] + [s.copy() for s in states]
    fused = [param.copy()] + [s.copy() for s in states]
    for t, g in enumerate(grads, start=1):
        h = dict(hyper)
        if name in ("adam", "adagrad"):
            h["step"] = t
        if name == "sgd":
            h["first_step"] = t == 1 and hyper.get("first_step", False)
        getattr(UNFUSED, f"{name}_update")(ref[0], g, *ref[1:], **h)
        getattr(FUSED, f"{name}_update")(fused[0], g, *fused[1:], **h)
    return fused, ref


OPTIMIZER_CASES = [
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.1, momentum=0.9, first_step=True)),
    ("sgd", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adam", dict(lr=1e-3)),
    ("adam", dict(lr=1e-2, beta1=0.8, beta2=0.99, weight_decay=0.1)),
    ("adam", dict(lr=1e-2, weight_decay=0.1, decoupled=True)),
    ("rmsprop", dict(lr=1e-2)),
    ("rmsprop", dict(lr=1e-2, momentum=0.9, weight_decay=0.01)),
    ("rmsprop", dict(lr=1e-2, momentum=0.5, centered=True, alpha=0.9)),
    ("adagrad", dict(lr=1e-2)),
    ("adagrad", dict(lr=1e-2, lr_decay=0.1, weight_decay=0.01)),
    ("adadelta", dict()),
    ("adadelta", dict(lr=0.5, rho=0.8, weight_decay=0.01)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", OPT_SHAPES)
@pytest.mark.parametrize("name,hyper", OPTIMIZER_CASES)
def test_optimizer_updates_match_reference(name, hyper, shape, dtype):
    rng = np.random.default_rng(10)
    fused, ref = _run_optimizer(name, rng, shape, dtype, hyper)
    for got, want in zip(fused, ref):
        assert_close(got, want, dtype, scale=1.0)


@settings(PROFILE)
@given(name_hyper=st.sampled_from(OPTIMIZER_CASES), dtype=st.sampled_from(DTYPES),
       lr=st.floats(1e-5, 1.0), wd=st.sampled_from([0.0, 1e-3, 0.5]),
       size=st.integers(1, 300), seed=st.integers(0, 2**31))
def test_optimizer_updates_hypothesis(name_hyper, dtype, lr, wd, size, seed):
    name, hyper = name_hyper
    hyper = dict(hyper, lr=lr, weight_decay=wd)
    fused, ref = _run_optimizer(name, np.random.default_rng(seed), (size,), dtype, hyper)
    for got, want in zip(fused, ref):
        assert_close(got, want, dtype, scale=1.0)


def test_sgd_without_momentum_accepts_no_buffer():
    p = np.ones(5, np.float32)
    FUSED.sgd_update(p, np.full(5, 2.0, np.float32), None, lr=0.5)
    np.testing.assert_array_equal(p, 0.0)


def test_optimizer_non_contiguous_falls_back():
    rng = np.random.default_rng(11)
    base = _state(rng, (8, 10), np.float64)
    for backend in (FUSED, UNFUSED):
        p = base.copy()
        m = np.zeros_like(p)
        v = np.zeros_like(p)
        backend.adam_update(p[:, ::2], base[:, ::2], m[:, ::2], v[:, ::2], step=1, lr=0.1)
        if backend is FUSED:
            fused_p = p
    np.testing.assert_array_equal(fused_p, p)
    assert not np.array_equal(p[:, 1::2], 0) and np.array_equal(p[:, 1::2], base[:, 1::2])


def test_adam_nan_gradient_propagates():
    p = np.ones(4, np.float32)
    g = np.array([0.1, np.nan, np.inf, -0.1], np.float32)
    m, v = np.zeros(4, np.float32), np.zeros(4, np.float32)
    FUSED.adam_update(p, g, m, v, step=1, lr=0.1)
    assert np.isnan(p[1]) and np.isnan(p[2]) and np.isfinite(p[[0, 3]]).all()


# ------------------------------------------------------------------ determinism, threads

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
        cpu._kernel("batchnorm_forward_train", size)(x, gamma, beta, ym[3], ym[4], 1e-5, 0.1,
                                                     True, ym[0], ym[1], ym[2], False)
        back = (np.empty_like(x), np.empty(37, np.float32), np.empty(37, np.float32))
        cpu._kernel("batchnorm_backward", size)(dy, x, gamma, beta, ym[1], ym[2], True,
                                                *back, False)
        d = np.empty_like(x)
        loss = np.empty(x.shape[0])
        cpu._kernel("softmax_cross_entropy", size)(x, np.arange(300) % 37, d, loss)
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


# ------------------------------------------------------------------ fused vs unfused backend

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

