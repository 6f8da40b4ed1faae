"""Simulator-only checks of kernels/trust_ratio/cuda.py (run by test_trust_ratio_cuda.py).

Needs ``NUMBA_ENABLE_CUDASIM=1`` set before Numba is imported, so it runs in its own
process; its name keeps the normal test run from collecting it.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("run with NUMBA_ENABLE_CUDASIM=1", allow_module_level=True)

from dualnn.kernels.trust_ratio import cuda as k
from dualnn.kernels.trust_ratio import reference

warnings.filterwarnings("ignore", message="Grid size")


def _scratch(size, dtype):
    partial_shape, ratio_shape = k.scratch_shapes(size)
    return np.full(partial_shape, np.nan, dtype), np.full(ratio_shape, np.nan, dtype)


def _tol(dtype):
    return {"rtol": 1e-4, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-11, "atol": 1e-13}


def _arrays(shape, dtype, edge):
    rng = np.random.default_rng(0)
    p, g = rng.standard_normal(shape), rng.standard_normal(shape)
    if edge == "zero-param":
        p[...] = 0
    if edge == "zero-grad":
        g[...] = 0
    return p.astype(dtype), g.astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1,), (3, 7), (600,)], ids=str)
@pytest.mark.parametrize("edge", ["random", "zero-param", "zero-grad"])
@pytest.mark.parametrize("adapt", [True, False])
def test_lamb_kernel_matches_reference(dtype, shape, edge, adapt):
    p, g = _arrays(shape, dtype, edge)
    m = np.full(shape, 0.01, dtype)
    v = np.full(shape, 0.02, dtype)
    hyper = {"step": 2, "lr": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-6, "weight_decay": 0.01,
                 "adapt": adapt}
    want = reference.lamb_update(np, p, g, m, v, **hyper)
    partial, ratio = _scratch(p.size, dtype)
    k.lamb_update(p, g, m, v, partial=partial, ratio=ratio, **hyper)
    for got, exp in zip((p, m, v), want):
        np.testing.assert_allclose(got, exp, **_tol(dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1,), (3, 7), (600,)], ids=str)
@pytest.mark.parametrize("edge", ["random", "zero-param", "zero-grad"])
@pytest.mark.parametrize("adapt", [True, False])
def test_lars_kernel_matches_reference(dtype, shape, edge, adapt):
    p, g = _arrays(shape, dtype, edge)
    b = np.full(shape, 0.01, dtype)
    hyper = {"lr": 0.5, "momentum": 0.9, "weight_decay": 1e-3, "trust_coefficient": 0.01, "eps": 1e-8,
                 "adapt": adapt}
    want = reference.lars_update(np, p, g, b, **hyper)
    partial, ratio = _scratch(p.size, dtype)
    k.lars_update(p, g, b, partial=partial, ratio=ratio, **hyper)
    for got, exp in zip((p, b), want):
        np.testing.assert_allclose(got, exp, **_tol(dtype))


def test_launcher_rejects_wrong_scratch():
    p = np.ones(10)
    partial, ratio = _scratch(10, "float64")
    with pytest.raises(ValueError, match="partial"):
        k.lars_update(p, p.copy(), np.zeros(10), partial=partial[:, :0], ratio=ratio, lr=1.0)
    with pytest.raises(TypeError, match="dtype"):
        k.lars_update(p, p.astype(np.float32), np.zeros(10), partial=partial, ratio=ratio,
                      lr=1.0)


def test_cudasim_backend_runs_the_optimizers():
    import dualnn as dn
    from dualnn.backend.cudasim_backend import CudaSimBackend
    from dualnn.parameter import Parameter

    sim, ref = CudaSimBackend(), dn.backend.NumpyBackend(fused=False)
    results = []
    for backend in (sim, ref):
        rng = np.random.default_rng(3)
        params = [Parameter(backend.store(rng.standard_normal((6, 5))), backend, name="w"),
                  Parameter(backend.store(rng.standard_normal(6)), backend, name="b")]
        opts = [dn.optim.LAMB(params, lr=0.01), dn.optim.LARS(params, lr=1.0)]
        for opt in opts:
            for _ in range(2):
                for p in params:
                    p.grad = backend.store(rng.standard_normal(p.shape))
                opt.step()
        results.append([np.array(p.data) for p in params])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
