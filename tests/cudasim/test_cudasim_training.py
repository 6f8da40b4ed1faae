"""A tiny model trains a few Adam steps on CudaSimBackend and matches NumpyBackend (unfused).

Linear -> BatchNorm -> ReLU -> Linear with softmax cross-entropy: the fused BatchNorm+ReLU,
activation, loss and optimizer kernels all run through the GPU backend's dispatch.
"""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
from dualnn.backend import NumpyBackend
from dualnn.backend.cudasim_backend import CudaSimBackend


def _train(backend, x_host, y_host, steps, dtype):
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


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tiny_model_matches_numpy(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 5))
    y = rng.integers(0, 3, 12)
    sim = _train(CudaSimBackend(), x, y, 4, dtype)
    ref = _train(NumpyBackend(fused=False), x, y, 4, dtype)
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == "float32" else {"rtol": 1e-9, "atol": 1e-11}
    np.testing.assert_allclose(sim[0], ref[0], **tol)
    assert sim[0][-1] < sim[0][0]  # it learns
    for a, b in zip(sim[1] + sim[2] + [sim[3]], ref[1] + ref[2] + [ref[3]]):
        np.testing.assert_allclose(a, b, **tol)
    from dualnn.kernels import cuda as ck

    launched = {name for name, kernel_dtype, _ in ck._compiled if kernel_dtype == dtype}
    assert {"batchnorm_forward_partial", "batchnorm_backward_apply", "batchnorm_forward_eval",
            "softmax_cross_entropy_rows", "adam_update", "activation_backward",
            "bias_activation_forward"} <= launched
