"""The GPU backend reduces a Linear layer's bias gradient with the column-sum kernel (the
batch-norm-style deterministic 2-D reduction), not CuPy's generic axis-0 sum."""

from __future__ import annotations

import numpy as np
import pytest
from dualnn.kernels import cuda as ck

import dualnn as dn
from tests.cupy_double.helpers import tolerance

cupy = pytest.importorskip("cupy")


def test_linear_bias_gradient_runs_the_column_sum_kernel(monkeypatch):
    calls = []
    launcher = ck.column_sum

    def spy(a, **kwargs):
        calls.append((a.shape, kwargs["out"].shape, kwargs["accumulate"]))
        return launcher(a, **kwargs)

    monkeypatch.setattr(ck, "column_sum", spy)
    gpu = dn.device.backend_for("gpu")
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((9, 5)), rng.standard_normal((9, 3))
    with dn.use_backend(gpu):
        dn.seed(0)
        layer = dn.layers.Linear(5, 3, dtype="float64")
        layer.forward(gpu.asarray(x, "float64"), training=True)
        layer.backward(gpu.asarray(dy, "float64"))
        layer.forward(gpu.asarray(x, "float64"), training=True)
        layer.backward(gpu.asarray(dy, "float64"), input_grad=False)  # accumulates
        bias_grad = gpu.to_host(layer.bias.grad)
    assert [call[:2] for call in calls] == [((9, 3), (3,))] * 2
    assert calls[1][2], "the second backward must add into the gradient"
    np.testing.assert_allclose(bias_grad, 2 * dy.sum(axis=0), **tolerance("float64"))


def test_column_sum_kernel_is_compiled_by_a_training_step():
    gpu = dn.device.backend_for("gpu")
    with dn.use_backend(gpu):
        layer = dn.layers.Linear(4, 2, dtype="float32")
        layer.forward(gpu.asarray(np.ones((6, 4)), "float32"), training=True)
        layer.backward(gpu.asarray(np.ones((6, 2)), "float32"))
        np.testing.assert_allclose(gpu.to_host(layer.bias.grad), [6.0, 6.0])
    assert ("column_sum_partial", "float32", None) in ck.FAMILIES["reduce"]._compiled


@pytest.mark.parametrize("kind", ["float16", "bfloat16"])
def test_16_bit_bias_gradient_reads_the_16_bit_rows_in_the_kernel(monkeypatch, kind):
    """``sum_rows_mixed`` launches the column-sum kernel on the 16-bit ``dy`` itself (float32
    accumulator): no widened float32 copy of ``dy``, and no allocation after the first call."""
    from tests.cupy_double import double

    calls = []
    launcher = ck.column_sum

    def spy(a, **kwargs):
        calls.append((a.dtype.name, kwargs["out"].dtype.name, kwargs["accumulate"]))
        return launcher(a, **kwargs)

    monkeypatch.setattr(ck, "column_sum", spy)
    gpu = dn.device.backend_for("gpu")
    values = np.random.default_rng(1).standard_normal((300, 7)).astype(np.float32)
    dy = gpu.cast_storage(gpu.asarray(values, "float32"), kind)
    exact = gpu.to_host(gpu.cast_storage(dy, "float32")).astype(np.float64).sum(axis=0)
    out = gpu.asarray(np.ones(7), "float32")
    gpu.sum_rows_mixed(dy, out)
    with double.counting() as counts:
        gpu.sum_rows_mixed(dy, out)
    assert counts.alloc == 0, counts.where("alloc")
    bits = "uint16" if kind == "bfloat16" else "float16"
    assert calls == [(bits, "float32", True)] * 2
    np.testing.assert_allclose(gpu.to_host(out), 1 + 2 * exact, rtol=1e-5, atol=1e-4)
    gpu.sum_rows_mixed(dy, out, overwrite=True)
    assert calls[-1][2] is False
    np.testing.assert_allclose(gpu.to_host(out), exact, rtol=1e-5, atol=1e-4)
