"""The double behaves as CuPy 14 does where dualnn could tell, and counts what it must."""

from __future__ import annotations

import numpy as np
import pytest

from tests.cupy_double import double

cupy = pytest.importorskip("cupy")


def test_installed_double_is_what_import_cupy_returns():
    assert getattr(cupy, "is_double", False)
    assert cupy.__version__ == double.real_cupy().__version__
    assert type(cupy.asarray([1.0])).__module__ == "cupy"


def test_implicit_host_conversion_raises_like_cupy():
    a = cupy.asarray(np.arange(3.0))
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Unsupported type"):
        a + np.ones(3)
    with pytest.raises(TypeError, match="Unsupported type"):
        np.ones(3) * a
    with pytest.raises(TypeError, match="Unsupported type"):
        cupy.sum(np.ones(3))


def test_results_stay_zero_d_arrays():
    a = cupy.asarray(np.arange(4.0))
    for result in (cupy.sum(a), a.max(), a[1], np.sum(a), a.sum() * 2.0, cupy.mean(a)):
        assert isinstance(result, cupy.ndarray) and result.shape == ()


def test_numpy_only_attributes_fail_as_on_a_gpu():
    a = cupy.asarray(np.arange(4.0))
    with pytest.raises(AttributeError, match="has no attribute 'writeable'"):
        a.flags.writeable  # noqa: B018
    with pytest.raises(AttributeError, match="has no attribute 'ctypes'"):
        a.ctypes  # noqa: B018
    with pytest.raises(TypeError):
        list(range(10))[cupy.sum(a > 0)]  # CuPy arrays have no __index__


def test_numpy_only_keywords_fail_as_on_a_gpu():
    a = cupy.asarray(np.arange(4.0))
    with pytest.raises(TypeError, match="cupy.clip"):
        cupy.clip(a, min=1.0)
    np.testing.assert_array_equal(cupy.clip(a, 1.0, None).get(), [1.0, 1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="cupy.reshape"):
        cupy.reshape(a, shape=(2, 2))
    with pytest.raises(TypeError, match="cupy.exp"):
        cupy.exp(a, where=a > 0)
    with pytest.raises(TypeError, match="cupy.ndarray.sum"):
        a.sum(where=a > 0)
    with pytest.raises(TypeError, match="cupy.ndarray.max"):
        a.max(initial=0.0)
    with pytest.raises(AttributeError, match="no attribute 'not_a_cupy_function'"):
        cupy.not_a_cupy_function  # noqa: B018


def test_host_reads_are_counted_as_syncs():
    a = cupy.asarray(np.arange(4.0))
    s = cupy.sum(a)
    with double.counting() as c:
        float(s)
        int(s)
        bool(s)
        s.item()
        a.get()
        cupy.asnumpy(a)
        a[a > 1]  # a boolean mask's result size is data
    assert c.sync == 7, c.where("sync")
    with double.counting() as c:
        a.get(blocking=False)
        cupy.cuda.Device(0).synchronize()
    assert (c.sync, c.d2h_async) == (1, 1)


def test_allocations_are_counted_and_views_are_not():
    a = cupy.asarray(np.arange(6.0).reshape(2, 3))
    out = cupy.empty((2, 3))
    with double.counting() as c:
        views = [a.T, a.reshape(3, 2), a[0], a[0:1, :]]
        cupy.multiply(a, 2.0, out=out)
        out += a
    assert c.alloc == 0 and len(views) == 4, c.where("alloc")
    with double.counting() as c:
        b = a * 2.0 + 1.0  # two results
        cupy.sum(b)
        b.astype(np.float32)
    assert c.alloc == 4, c.where("alloc")


def test_out_argument_returns_the_same_array():
    a = cupy.asarray(np.arange(6.0).reshape(2, 3))
    out = cupy.empty((3, 3))
    assert cupy.matmul(a.T, a, out=out) is out
    np.testing.assert_allclose(out.get(), np.arange(6.0).reshape(2, 3).T
                               @ np.arange(6.0).reshape(2, 3))
    assert np.multiply(out, 2.0, out=out) is out  # NumPy's protocol hands over out=(out,)


def test_host_to_device_transfers_and_pinned_memory():
    host = np.arange(4.0)
    mem = cupy.cuda.alloc_pinned_memory(host.nbytes)
    pinned = np.frombuffer(mem, host.dtype, host.size)
    pinned[...] = host
    with double.counting() as c:
        cupy.asarray(host)
        cupy.asarray(pinned)
    assert (c.h2d, c.h2d_pageable, c.alloc) == (2, 1, 2)


def test_cuda_pieces_dualnn_uses():
    assert cupy.cuda.is_available()
    assert cupy.cuda.runtime.getDeviceCount() == 1
    assert cupy.cuda.get_current_stream().ptr == 0
    with cupy.cuda.Stream(non_blocking=True) as stream:
        assert cupy.cuda.get_current_stream() is stream and stream.ptr == 0
    with cupy.cuda.Device(0) as device:
        assert device.id == 0
    pool = cupy.get_default_memory_pool()
    before = pool.used_bytes()
    keep = cupy.zeros((1000,), dtype=np.float64)
    assert pool.used_bytes() - before == keep.nbytes
    assert pool.total_bytes() >= pool.used_bytes()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    end.record()
    assert cupy.cuda.get_elapsed_time(start, end) >= 0


def test_random_generator_binds_cupys_signature():
    rng = cupy.random.default_rng(3)
    draw = rng.random((2, 3), dtype="float32")
    assert isinstance(draw, cupy.ndarray) and draw.dtype == np.float32
    with pytest.raises(TypeError, match="Generator.random"):
        rng.random((2, 3), np.float32, None, "extra")


def test_simulator_kernels_write_into_double_arrays():
    from dualnn.kernels import cuda as ck
    from dualnn.kernels import reference

    rng = np.random.default_rng(0)
    z_host = rng.standard_normal((6, 5))
    z = cupy.asarray(z_host)
    out = cupy.empty_like(z)
    with double.counting() as c:
        result = ck.activation_forward("tanh", z, out=out)
    assert result is out and (c.sync, c.alloc) == (0, 0)
    np.testing.assert_allclose(out.get(), reference.activation_forward(np, "tanh", z_host),
                               rtol=1e-12)


def test_pool_growth_counts_only_requests_no_freed_block_of_their_size_serves():
    """``alloc`` counts array objects; ``pool_growth`` only new device memory (CuPy's pool
    serves a request from a freed block of its 512-byte rounded size)."""
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    assert pool.n_free_blocks() == 0
    with double.counting() as counts:
        first = cupy.empty((100,), dtype=np.float64)     # 800 bytes: a new 1024-byte block
        del first
        assert pool.n_free_blocks() == 1
        second = cupy.empty((120,), dtype=np.float64)    # 960 bytes: the freed block
        assert pool.n_free_blocks() == 0
        third = cupy.empty((200,), dtype=np.float64)     # 1600 bytes: no block that size
        view = third[:10]                                # a view: neither
    assert (counts.alloc, counts.pool_growth) == (3, 2), counts
    assert second.shape == (120,) and view.shape == (10,)
