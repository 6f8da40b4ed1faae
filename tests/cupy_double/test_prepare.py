"""Kernels compile when parameters reach the GPU, never inside a training step; ``dualnn
info`` reports the cache and the TF32 setting."""

from __future__ import annotations

import io

import numpy as np

import dualnn as dn
from tests.cupy_double.helpers import data, mlp


def _compiled(gpu):
    return {key for family in gpu.kernels.FAMILIES.values() for key in family._compiled}


def test_kernels_of_the_model_dtype_compile_before_the_first_step(cpu_backend):
    gpu = dn.device.backend_for("gpu")
    with dn.use_backend(cpu_backend):
        dn.seed(0)
        model = mlp("float32")
    model.to(gpu)  # compiles the float32 kernels
    assert "float32" in gpu._prepared
    before = _compiled(gpu)
    assert {k for k in before if k[1] == "float32" and k[0] == "adam_update"}
    x, y = data("softmax_cross_entropy")
    opt = dn.optim.Adam(model.parameters(), lr=1e-3)
    loss = dn.losses.SoftmaxCrossEntropy()
    loss.forward(model.forward(gpu.asarray(x, "float32"), training=True), gpu.asarray(y))
    model.backward(loss.backward())
    opt.step()
    assert _compiled(gpu) == before  # nothing compiled inside the step
    assert gpu.kernel_cache()["float32"] == len({k for k in before if k[1] == "float32"})


def test_info_reports_kernel_cache_and_tf32():
    from dualnn import cli

    gpu = dn.device.backend_for("gpu")
    with dn.use_backend(gpu):
        mlp("float64")
    out = io.StringIO()
    assert cli.cmd_info(None, out) == 0
    assert "cuda kernel cache" in out.getvalue() and "tf32 for float32 GEMMs" in out.getvalue()
    text = "\n".join(f"{k} {v}" for k, v in cli._gpu_kernel_rows())
    assert "float64:" in text and "tf32 for float32 GEMMs off" in text
    assert gpu.tf32 is False


def test_tf32_off_leaves_float32_products_exact():
    gpu = dn.device.backend_for("gpu")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 3)).astype("float32"), rng.standard_normal((3, 2)).astype(
        "float32")
    np.testing.assert_array_equal(gpu.to_host(gpu.matmul(gpu.asarray(a), gpu.asarray(b))),
                                  a @ b)
