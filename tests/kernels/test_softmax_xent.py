"""Softmax cross-entropy kernels: reference, CPU and CUDA-simulator twins from one set of
cases (one calling convention: loss and dlogits written into caller arrays), then
extreme logits and label checks.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from dualnn.kernels import cpu, reference
from dualnn.kernels import reference as R

from dualnn.errors import ShapeError

from .cases import (
    CUDASIM,
    DEVICES,
    DTYPE_NAMES,
    device_kernels,
    tolerances,
)
from .cpu_cases import (
    DTYPES,
    FUSED,
    assert_close,
    rand,
)

# ------------------------------------------------------------ every device, one set of cases

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 4), (6, 5), (37, 3)])
def test_softmax_xent_twins_agree_on_every_device(device, shape, dtype):
    k = device_kernels(device)
    rng = np.random.default_rng(shape[0])
    n, c = shape
    logits = (5 * rng.standard_normal(shape)).astype(dtype)
    logits.reshape(-1)[:2] = (1e4, -1e4)[: logits.size]
    labels = rng.integers(0, c, n)
    loss_want, d_want = R.softmax_cross_entropy(np, logits, labels)
    scratch_shape, scratch_dtype = k.softmax_cross_entropy_scratch(n, dtype)
    loss, dlogits = k.softmax_cross_entropy(
        logits, labels, loss=np.full((), 7, dtype), dlogits=np.full_like(logits, 7),
        row_loss=np.empty(scratch_shape, scratch_dtype))
    rtol, atol = tolerances(dtype)
    assert loss.dtype == np.dtype(dtype) and loss.size == 1
    np.testing.assert_allclose(loss.reshape(()), loss_want, rtol=rtol * 10, atol=atol)
    np.testing.assert_allclose(dlogits, d_want, rtol=rtol * 10, atol=atol)


def test_read_only_logits_take_the_fused_path():
    logits = np.random.default_rng(2).standard_normal((6, 4))
    logits.setflags(write=False)
    labels = np.arange(6) % 4
    got = FUSED.softmax_cross_entropy(logits, labels)
    want = R.softmax_cross_entropy(np, logits, labels)
    np.testing.assert_allclose(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1])


# ------------------------------------------------------------ CPU only: larger shapes, fallbacks, in place

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
            cpu.softmax_cross_entropy(logits, np.array(bad), loss=np.empty((), logits.dtype),
                                      dlogits=np.empty_like(logits), row_loss=np.empty(3))


# ------------------------------------------------------------ CUDA simulator: launch geometry, launcher checks


def _sim_run(ck, logits, labels):
    n = logits.shape[0]
    loss = np.full((), 99.0, logits.dtype)
    dlogits = np.empty_like(logits)
    row_loss = np.empty(ck.softmax_cross_entropy_scratch_shape(n), logits.dtype)
    result = ck.softmax_cross_entropy(logits, labels, loss=loss, dlogits=dlogits,
                                      row_loss=row_loss)
    assert result[0] is loss and result[1] is dlogits
    return loss, dlogits


@pytest.fixture(params=["thread", "warp"])
def path(request, ck):
    """Force one row kernel: one thread per row or one warp per row, whatever ``k``."""
    ck.config.xent_warp_min_classes = 10**9 if request.param == "thread" else 1
    return ck


def _sim_tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-14}


@CUDASIM
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("label_dtype", ["int32", "int64"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 4), (6, 5), (37, 3)])
def test_cudasim_matches_reference(ck, rng, shape, dtype, label_dtype):
    n, k = shape
    logits = (rng.standard_normal(shape) * 3).astype(dtype)
    labels = rng.integers(0, k, n).astype(label_dtype)
    loss_ref, dlogits_ref = reference.softmax_cross_entropy(np, logits, labels)
    loss, dlogits = _sim_run(ck, logits, labels)
    assert loss.shape == ()
    np.testing.assert_allclose(loss, loss_ref, **_sim_tol(dtype))
    np.testing.assert_allclose(dlogits, dlogits_ref, **_sim_tol(dtype))


@CUDASIM
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_cudasim_stable_for_huge_logits(path, dtype):
    """|z| ~ 1e4 and 3e38-ish spreads: the max shift keeps exp from overflowing."""
    logits = np.array([[1e4, -1e4, 0.0], [5e3, 5e3, 5e3], [-1e4, -1e4 + 1, -1e4 - 1]], dtype)
    labels = np.array([1, 0, 2])
    loss_ref, dlogits_ref = reference.softmax_cross_entropy(np, logits, labels)
    loss, dlogits = _sim_run(path, logits, labels)
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    np.testing.assert_allclose(loss, loss_ref, **_sim_tol(dtype))
    np.testing.assert_allclose(dlogits, dlogits_ref, **_sim_tol(dtype))


@CUDASIM
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_cudasim_nan_and_inf_logits_give_nan(path):
    logits = np.array([[0.0, np.nan, 1.0], [np.inf, 0.0, 1.0], [1.0, 2.0, 3.0]], np.float32)
    loss, dlogits = _sim_run(path, logits, np.array([0, 0, 2]))
    assert np.isnan(loss)
    assert np.isnan(dlogits[:2]).all() and np.isfinite(dlogits[2]).all()


@CUDASIM
def test_cudasim_minus_inf_logit_is_a_zero_probability(path):
    """A -inf logit off the label costs nothing (mathematically exact)."""
    logits = np.array([[-np.inf, 0.0, 0.0]], np.float64)
    loss, dlogits = _sim_run(path, logits, np.array([1]))
    np.testing.assert_allclose(loss, np.log(2.0))
    np.testing.assert_allclose(dlogits, [[0.0, -0.5, 0.5]])


@CUDASIM
def test_cudasim_label_out_of_range_is_nan_not_an_out_of_bounds_read(path):
    logits = np.zeros((3, 4), np.float32)
    loss, dlogits = _sim_run(path, logits, np.array([0, 4, -1]))
    assert np.isnan(loss)
    assert np.isfinite(dlogits[0]).all() and np.isnan(dlogits[1:]).all()


@CUDASIM
@pytest.mark.parametrize("warp_min_classes", [10**9, 1], ids=["thread", "warp"])
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_cudasim_grid_stride_and_tree_mean(tiny_grid, rng, dtype, warp_min_classes):
    """8 row threads (or 2 warps) for 37 rows, a 4-thread mean tree: still the reference."""
    ck = tiny_grid
    ck.config.xent_warp_min_classes = warp_min_classes
    logits = rng.standard_normal((37, 3)).astype(dtype)
    labels = rng.integers(0, 3, 37)
    loss_ref, dlogits_ref = reference.softmax_cross_entropy(np, logits, labels)
    loss, dlogits = _sim_run(ck, logits, labels)
    np.testing.assert_allclose(loss, loss_ref, **_sim_tol(dtype))
    np.testing.assert_allclose(dlogits, dlogits_ref, **_sim_tol(dtype))


@CUDASIM
def test_cudasim_deterministic(path, rng):
    logits = rng.standard_normal((37, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 37)
    first = [a.copy() for a in _sim_run(path, logits, labels)]
    second = _sim_run(path, logits, labels)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


@CUDASIM
class TestLauncherChecks:
    def test_float_labels(self, ck):
        logits = np.zeros((2, 3), np.float32)
        with pytest.raises(TypeError, match="labels"):
            _sim_run(ck, logits, np.zeros(2, np.float32))

    def test_label_shape(self, ck):
        logits = np.zeros((2, 3), np.float32)
        with pytest.raises(ValueError, match="labels"):
            _sim_run(ck, logits, np.zeros(3, np.int64))

    def test_loss_dtype_and_size(self, ck):
        logits = np.zeros((2, 3), np.float32)
        kw = {"dlogits": np.empty_like(logits), "row_loss": np.empty(2, np.float32)}
        with pytest.raises(TypeError, match="loss"):
            ck.softmax_cross_entropy(logits, np.zeros(2, np.int64),
                                     loss=np.empty((), np.float64), **kw)
        with pytest.raises(ValueError, match="loss"):
            ck.softmax_cross_entropy(logits, np.zeros(2, np.int64),
                                     loss=np.empty(2, np.float32), **kw)


# ------------------------------------------------------------ one warp per row


@CUDASIM
@pytest.mark.parametrize("classes", [1, 31, 32, 33, 100])
@pytest.mark.parametrize("rows", [1, 9, 40])
def test_cudasim_warp_rows_match_reference(ck, classes, rows):
    """Lane-strided columns (k below, at and above 32, several columns per lane) and
    grid-stride rows (2 warps per block, 16 blocks under the simulator) in float64."""
    ck.config.xent_warp_min_classes = 1
    ck.config.block = 64
    rng = np.random.default_rng(classes * 100 + rows)
    logits = rng.standard_normal((rows, classes)) * 4
    labels = rng.integers(0, classes, rows).astype(np.int32)
    loss_ref, dlogits_ref = reference.softmax_cross_entropy(np, logits, labels)
    loss, dlogits = _sim_run(ck, logits, labels)
    np.testing.assert_allclose(loss, loss_ref, **_sim_tol("float64"))
    np.testing.assert_allclose(dlogits, dlogits_ref, **_sim_tol("float64"))


@CUDASIM
@pytest.mark.parametrize("shape", [(9, 33), (12, 100)])
def test_cudasim_warp_rows_float32(ck, shape):
    ck.config.xent_warp_min_classes = 1
    ck.config.block = 64
    rng = np.random.default_rng(shape[1])
    logits = (rng.standard_normal(shape) * 4).astype(np.float32)
    labels = rng.integers(0, shape[1], shape[0])
    loss_ref, dlogits_ref = reference.softmax_cross_entropy(np, logits, labels)
    loss, dlogits = _sim_run(ck, logits, labels)
    assert dlogits.dtype == np.float32
    np.testing.assert_allclose(loss, loss_ref, **_sim_tol("float32"))
    np.testing.assert_allclose(dlogits, dlogits_ref, **_sim_tol("float32"))


@CUDASIM
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_cudasim_warp_edge_values_reach_every_lane(ck):
    """A NaN or +inf seen by one lane reaches the whole row; a -inf (and a huge logit) in
    one lane's columns leaves a finite loss; rows stay independent."""
    ck.config.xent_warp_min_classes = 1
    k = 70
    logits = np.zeros((5, k))
    logits[0, 40] = np.nan                 # lane 8's second column
    logits[1, 69] = np.inf                 # lane 5's third column
    logits[2, 33] = -np.inf                # off the label
    logits[3, 66] = 1e4                    # the max sits in lane 2 only
    logits[4, :] = np.linspace(-3, 3, k)
    labels = np.array([0, 1, 2, 66, 31])
    with np.errstate(all="ignore"):
        _, dlogits_ref = reference.softmax_cross_entropy(np, logits, labels)
        loss_ref2, _ = reference.softmax_cross_entropy(np, logits[2:], labels[2:])
    loss, dlogits = _sim_run(ck, logits, labels)
    assert np.isnan(loss)
    assert np.isnan(dlogits[:2]).all() and np.isfinite(dlogits[2:]).all()
    np.testing.assert_allclose(dlogits[2:], dlogits_ref[2:], **_sim_tol("float64"))
    assert dlogits[2, 33] == 0.0
    loss2, _ = _sim_run(ck, logits[2:].copy(), labels[2:].copy())
    np.testing.assert_allclose(loss2, loss_ref2, **_sim_tol("float64"))


@CUDASIM
@pytest.mark.parametrize("classes,kernel", [(15, "softmax_cross_entropy_rows"),
                                            (16, "softmax_cross_entropy_warp_rows")])
def test_cudasim_launcher_picks_the_row_kernel_by_class_count(ck, monkeypatch, classes,
                                                              kernel):
    from dualnn.kernels.softmax_xent import cuda as xent

    assert ck.config.xent_warp_min_classes == 16
    launched = []
    real = xent.KERNELS.compiled

    def record(name, *args):
        launched.append(name)
        return real(name, *args)

    monkeypatch.setattr(xent.KERNELS, "compiled", record)
    logits = np.zeros((2, classes))
    loss, _ = _sim_run(ck, logits, np.array([0, classes - 1]))
    assert launched == [kernel, "softmax_cross_entropy_mean"]
    np.testing.assert_allclose(loss, np.log(classes))


def test_warp_kernel_compiles_to_butterfly_shuffles():
    """On the real CUDA target the reductions are ``shfl.sync.bfly`` (5 steps each for max
    and sum; a float64 shuffle moves two 32-bit halves)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1":
        pytest.skip("compile_ptx needs the real CUDA target")
    cuda = pytest.importorskip("numba.cuda")
    from dualnn.kernels.softmax_xent import cuda as xent

    for dtype, per_shuffle in (("float32", 1), ("float64", 2)):
        name = "softmax_cross_entropy_warp_rows"
        try:
            ptx, _ = cuda.compile_ptx(xent.KERNELS.python_kernel(name, dtype),
                                      xent.KERNELS.signature(name, dtype, "int32"),
                                      cc=(9, 0))
        except Exception as exc:  # noqa: BLE001 - no NVRTC wheels
            pytest.skip(f"compile_ptx unavailable: {exc}")
        assert ptx.count("shfl.sync.bfly") == 2 * 5 * per_shuffle


# ------------------------------------------------------------ CUDA simulator: float16 logits

@CUDASIM
@pytest.mark.parametrize("shape", [(1, 4), (6, 5), (37, 3)])
def test_cudasim_float16_logits_match_float32_reference(ck, rng, shape):
    n, k = shape
    logits = (rng.standard_normal(shape) * 3).astype(np.float16)
    labels = rng.integers(0, k, n).astype(np.int64)
    loss_ref, dlogits_ref = reference.softmax_cross_entropy(np, logits.astype(np.float32),
                                                            labels)
    loss = np.full((), 99.0, np.float32)  # loss and row sums stay float32
    dlogits = np.full_like(logits, 7.0)
    shape_, dtype = ck.softmax_cross_entropy_scratch(n, "float16")
    assert dtype == "float32"
    ck.softmax_cross_entropy(logits, labels, loss=loss, dlogits=dlogits,
                             row_loss=np.empty(shape_, dtype))
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5, atol=1e-6)
    # dlogits: float32 values rounded once to float16 (one ulp, 2**-10 relative)
    assert dlogits.dtype == np.float16
    np.testing.assert_allclose(dlogits.astype(np.float32),
                               dlogits_ref.astype(np.float16).astype(np.float32),
                               rtol=2.0 ** -10, atol=2.0 ** -24)


@CUDASIM
def test_cudasim_float16_logits_need_float32_loss(ck):
    logits = np.zeros((2, 3), np.float16)
    labels = np.zeros(2, np.int64)
    with pytest.raises(TypeError, match="float32"):
        ck.softmax_cross_entropy(logits, labels, loss=np.zeros((), np.float16),
                                 dlogits=np.empty_like(logits),
                                 row_loss=np.empty(2, np.float32))


@CUDASIM
def test_cudasim_backend_float16_logits_give_a_float32_loss(rng):
    from tests.support.cudasim_backend import CudaSimBackend

    backend = CudaSimBackend()
    logits = rng.standard_normal((5, 4)).astype(np.float16)
    labels = rng.integers(0, 4, 5)
    loss, dlogits = backend.softmax_cross_entropy(logits, labels)
    assert loss.dtype == np.float32 and dlogits.dtype == np.float16
    loss_ref, _ = reference.softmax_cross_entropy(np, logits.astype(np.float32), labels)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)


def _to_bf16_bits(x):
    from dualnn.kernels.cast import reference as cast_reference

    rounded = cast_reference.round_bfloat16(np, np.asarray(x, np.float32))
    return (rounded.view(np.uint32) >> 16).astype(np.uint16)


def _from_bf16_bits(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


@CUDASIM
@pytest.mark.parametrize("shape", [(1, 4), (6, 5), (37, 3)])
def test_cudasim_bfloat16_logits_match_float32_reference(ck, rng, shape):
    """bfloat16 logits/dlogits as uint16 bits (widened in-kernel; under the simulator the
    bit reinterpretation is NumPy's view), float32 loss."""
    n, k = shape
    logits = _to_bf16_bits(rng.standard_normal(shape) * 3)
    labels = rng.integers(0, k, n).astype(np.int32)
    loss_ref, dlogits_ref = reference.softmax_cross_entropy(np, _from_bf16_bits(logits),
                                                            labels)
    loss = np.full((), 99.0, np.float32)
    dlogits = np.full_like(logits, 7)
    shape_, dtype = ck.softmax_cross_entropy_scratch(n, "bfloat16")
    ck.softmax_cross_entropy(logits, labels, loss=loss, dlogits=dlogits,
                             row_loss=np.empty(shape_, dtype))
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5, atol=1e-6)
    assert dlogits.dtype == np.uint16
    # one bfloat16 ulp (2**-7 relative) from the float32 reference rounded to bfloat16
    np.testing.assert_allclose(_from_bf16_bits(dlogits),
                               _from_bf16_bits(_to_bf16_bits(dlogits_ref)), rtol=2.0 ** -7,
                               atol=0)


@CUDASIM
def test_cudasim_bfloat16_bad_label_gives_nan_row(ck):
    logits = _to_bf16_bits(np.zeros((2, 3)))
    loss = np.zeros((), np.float32)
    dlogits = np.zeros_like(logits)
    ck.softmax_cross_entropy(logits, np.array([0, 5]), loss=loss, dlogits=dlogits,
                             row_loss=np.empty(2, np.float32))
    assert np.isnan(loss)
    assert np.isnan(_from_bf16_bits(dlogits[1])).all()
    assert np.isfinite(_from_bf16_bits(dlogits[0])).all()


@CUDASIM
def test_cudasim_backend_bfloat16_logits_give_a_float32_loss(rng):
    from tests.support.cudasim_backend import CudaSimBackend

    backend = CudaSimBackend()
    logits = _to_bf16_bits(rng.standard_normal((5, 4)))
    labels = rng.integers(0, 4, 5)
    loss, dlogits = backend.softmax_cross_entropy(logits, labels)
    assert loss.dtype == np.float32 and dlogits.dtype == np.uint16
    loss_ref, _ = reference.softmax_cross_entropy(np, _from_bf16_bits(logits), labels)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
