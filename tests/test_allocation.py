"""Long-lived CPU arrays (parameters, gradients, optimizer state) are 2 MiB-aligned when large."""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
from dualnn.backend import NumpyBackend
from dualnn.backend.allocation import (ALIGN_FROM_BYTES, HUGE_PAGE_BYTES, aligned_empty,
                                       aligned_zeros)


def address(a):
    return a.__array_interface__["data"][0]


def is_aligned(a):
    return address(a) % HUGE_PAGE_BYTES == 0


@pytest.mark.parametrize("dtype", ["float32", "float64", "int8"])
@pytest.mark.parametrize("shape", [(0,), (3, 5), (1024, 1024), (1025, 1023), (2, 3, 1 << 19)])
def test_aligned_empty_has_the_shape_dtype_and_alignment(shape, dtype):
    a = aligned_empty(shape, dtype)
    assert a.shape == shape and a.dtype == np.dtype(dtype)
    assert a.flags.c_contiguous and a.flags.writeable
    if a.nbytes >= ALIGN_FROM_BYTES:
        assert is_aligned(a)
    a[...] = 7  # the whole array is usable memory
    assert (a == 7).all()


def test_aligned_zeros_are_zero_and_arrays_do_not_overlap():
    arrays = [aligned_zeros((1 << 20,), np.float32) for _ in range(3)]
    for a in arrays:
        assert is_aligned(a) and not a.any()
    arrays[0][...] = 1
    assert not arrays[1].any() and not arrays[2].any()
    assert not np.shares_memory(arrays[0], arrays[1])


def test_numpy_backend_allocates_large_arrays_aligned():
    b = NumpyBackend()
    assert is_aligned(b.empty((1024, 1024), "float32"))
    z = b.zeros((2048, 1024), "float32")
    assert is_aligned(z) and not z.any()
    like = b.zeros_like(np.ones((1024, 1024), np.float64))
    assert like.dtype == np.float64 and is_aligned(like) and not like.any()


def test_store_copies_values_and_dtype_and_never_returns_its_input():
    b = NumpyBackend()
    host = np.arange(1 << 20, dtype=np.float64).reshape(1024, 1024)
    for dtype in (None, "float64", "float32"):
        stored = b.store(host, dtype)
        assert stored is not host and not np.shares_memory(stored, host)
        assert stored.dtype == (host.dtype if dtype is None else np.dtype(dtype))
        np.testing.assert_array_equal(stored, host.astype(stored.dtype))
        assert is_aligned(stored)
    assert b.store([1.0, 2.0], "float32").tolist() == [1.0, 2.0]


def test_linear_parameters_gradients_and_adam_state_are_aligned():
    model = dn.Sequential(dn.layers.Linear(1024, 1024), dn.layers.ReLU(),
                          dn.layers.Linear(1024, 10))
    opt = dn.optim.Adam(model.parameters())
    x = np.random.default_rng(0).standard_normal((8, 1024)).astype(np.float32)
    loss = dn.losses.SoftmaxCrossEntropy()
    loss.forward(model.forward(x, training=True), np.arange(8) % 10)
    model.backward(loss.backward())
    opt.step()
    weight = model.parameters()[0]
    assert is_aligned(weight.data) and is_aligned(weight.grad)
    assert is_aligned(weight.state["exp_avg"]) and is_aligned(weight.state["exp_avg_sq"])
    # a restored optimizer state is placed the same way, with the same values
    fresh = dn.optim.Adam(model.parameters())
    saved = {k: v.copy() for k, v in weight.state.items() if k != "step"}
    fresh.load_state_dict(opt.state_dict())
    for key, value in saved.items():
        assert is_aligned(weight.state[key])
        np.testing.assert_array_equal(weight.state[key], value)


def test_huge_page_status_names_the_kernel_mode_and_numpy_advice(monkeypatch):
    from dualnn.backend import allocation

    line = allocation.huge_page_status()
    assert line.split()[0] in ("yes", "no")
    assert "kernel THP mode:" in line and "NumPy madvise:" in line and "4 MiB" in line
    monkeypatch.setattr("builtins.open", lambda *a, **k: (_ for _ in ()).throw(OSError()))
    assert allocation.huge_page_status().startswith("no (kernel THP mode: not available")
