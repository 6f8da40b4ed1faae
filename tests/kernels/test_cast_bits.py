"""The bfloat16 bit-pattern kernels (kernels.cast.cpu.bfloat16_bits, round_bfloat16_bits)
against their reference twin, which is checked against PyTorch's conversion."""

from __future__ import annotations

import numpy as np
import pytest
from dualnn.kernels.cast import cpu
from dualnn.kernels.cast import reference as cast


def _edge_values():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(3000) * np.exp(rng.uniform(-60, 60, 3000))).astype(np.float32)
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 3.4e38, -3.4e38,
                        1e-45, -1e-45, 1.17e-38], dtype=np.float32)
    odd_nan = np.array([0x7F800001, 0xFFC12345, 0x7FBFFFFF], dtype=np.uint32).view(np.float32)
    ties = (np.arange(64, dtype=np.uint32) << 16 | 0x3F800000 | 0x8000).view(np.float32)
    return np.concatenate([x, special, odd_nan, ties])


def test_reference_bits_are_torch_bfloat16():
    torch = pytest.importorskip("torch")
    x = _edge_values()
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    got = cast.bfloat16_bits(np, x)
    assert got.dtype == np.uint16
    finite = np.isfinite(x)  # NaN payloads may differ; NaN must stay NaN
    np.testing.assert_array_equal(got[finite], want[finite])
    as_float = (got.astype(np.uint32) << 16).view(np.float32)
    assert np.all(np.isnan(as_float[np.isnan(x)]))
    np.testing.assert_array_equal(as_float, cast.round_bfloat16(np, x))


@pytest.mark.parametrize("repeat", [1, 128])  # serial and parallel builds
def test_cpu_bits_kernels_match_the_reference(repeat):
    x = np.tile(_edge_values(), repeat).reshape(repeat, -1)
    want_bits = cast.bfloat16_bits(np, x)
    want = cast.round_bfloat16(np, x)
    bits = cpu.bfloat16_bits(x, bits=np.empty(x.shape, np.uint16))
    np.testing.assert_array_equal(bits, want_bits)
    out, bits2 = cpu.round_bfloat16_bits(x, out=np.empty_like(x),
                                         bits=np.empty(x.shape, np.uint16))
    np.testing.assert_array_equal(bits2, want_bits)
    np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))
    inplace = x.copy()
    cpu.round_bfloat16_bits(inplace, out=inplace, bits=np.empty(x.shape, np.uint16))
    np.testing.assert_array_equal(inplace.view(np.uint32), want.view(np.uint32))


def test_bits_kernels_check_their_arguments():
    x = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="uint16"):
        cpu.bfloat16_bits(x, bits=np.empty((3, 4), np.int16))
    with pytest.raises(ValueError, match="shape"):
        cpu.bfloat16_bits(x, bits=np.empty((4, 3), np.uint16))
    with pytest.raises(ValueError, match="float32"):
        cpu.round_bfloat16_bits(x.astype(np.float64), out=np.empty((3, 4), np.float64),
                                bits=np.empty((3, 4), np.uint16))
    with pytest.raises(ValueError, match="C-contiguous"):
        cpu.bfloat16_bits(np.ones((4, 3), np.float32).T, bits=np.empty((3, 4), np.uint16))
    assert cpu.bfloat16_bits(np.ones((0, 4), np.float32),
                             bits=np.empty((0, 4), np.uint16)).shape == (0, 4)
