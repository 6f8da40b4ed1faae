"""On the GPU backend, batch norm's batch-axis reductions outside the fused batch-norm
kernels (eval-mode backward; synchronized statistics and backward) run the column-sum
kernels (the deterministic 2-D reduction, no atomics), never CuPy's generic axis-0 sum or
mean, and write into buffers the layer keeps (no allocation by the reductions per step)."""

from __future__ import annotations

import numpy as np
import pytest
from dualnn.kernels import cuda as ck

import dualnn as dn
from dualnn.layers import batchnorm as bn_module
from tests.cupy_double import double
from tests.cupy_double.helpers import tolerance

cupy = pytest.importorskip("cupy")

REDUCTION_SITES = ("column_sums2", "_batch_sums", "sum_rows_into", "column_sum")


@pytest.fixture
def spies(monkeypatch):
    """Records launches of the column-sum kernels and axis-0 ``cupy.sum``/``cupy.mean``."""
    calls = []
    for name in ("column_sum", "column_sums2"):
        launcher = getattr(ck, name)

        def spy(*args, _name=name, _launcher=launcher, **kwargs):
            calls.append((_name, tuple(args[0].shape)))
            return _launcher(*args, **kwargs)

        monkeypatch.setattr(ck, name, spy)
    for name in ("sum", "mean"):
        generic = getattr(cupy, name)

        def spy_generic(a, *args, _name=name, _generic=generic, **kwargs):
            axis = kwargs.get("axis", args[0] if args else None)
            if axis == 0 and getattr(a, "ndim", 0) == 2:
                calls.append((f"cupy.{_name}", tuple(a.shape)))
            return _generic(a, *args, **kwargs)

        monkeypatch.setattr(cupy, name, spy_generic)
    return calls


def _run(backend, x, dy, *, training, steps=2, relu=False):
    """``steps`` forward/backward pairs of a BatchNorm (+ ReLU) on ``backend``."""
    with dn.use_backend(backend):
        dn.seed(0)
        layer = dn.layers.BatchNorm(x.shape[1], dtype="float64", sync=True)
        layer.gamma.data[...] = backend.asarray(np.linspace(0.5, 1.5, x.shape[1]), "float64")
        block = layer.fuse_next(dn.layers.ReLU()) if relu else layer
        xd, dyd = backend.asarray(x, "float64"), backend.asarray(dy, "float64")
        outs = []
        for _ in range(steps):
            y = block.forward(xd, training=training)
            dx = block.backward(dyd)
            outs.append((backend.to_host(y), backend.to_host(dx)))
        grads = (backend.to_host(layer.gamma.grad), backend.to_host(layer.beta.grad))
        stats = (backend.to_host(layer.running_mean), backend.to_host(layer.running_var))
    return layer, outs, grads, stats


def _case(n=11, c=5):
    rng = np.random.default_rng(3)
    return rng.standard_normal((n, c)) * 2 + 1, rng.standard_normal((n, c))


def _assert_same(gpu_run, cpu_run):
    tol = tolerance("float64")
    for got, want in zip(gpu_run[1:], cpu_run[1:]):
        for g, w in zip(np.asarray(got, dtype=object).ravel(),
                        np.asarray(want, dtype=object).ravel()):
            np.testing.assert_allclose(g, w, **tol)


@pytest.mark.parametrize("relu", [False, True])
def test_eval_mode_backward_runs_the_column_sums_kernel(spies, relu):
    x, dy = _case()
    gpu = dn.device.backend_for("gpu")
    gpu_run = _run(gpu, x, dy, training=False, relu=relu)
    assert spies == [("column_sums2", x.shape)] * 2, spies
    cpu_run = _run(dn.device.backend_for("cpu"), x, dy, training=False, relu=relu)
    _assert_same(gpu_run, cpu_run)


def test_synchronized_batch_norm_runs_the_column_sum_kernels(spies, monkeypatch):
    """A job of several ranks is simulated with a size of 2 and identity collectives: the
    synchronized statistics are then this rank's, exactly an ordinary batch norm's."""
    monkeypatch.setattr(bn_module, "_distributed_size", lambda: 2)
    x, dy = _case()
    gpu = dn.device.backend_for("gpu")
    gpu_run = _run(gpu, x, dy, training=True)
    forward = [("column_sum", x.shape), ("column_sums2", x.shape)]
    assert spies == (forward + [("column_sums2", x.shape)]) * 2, spies
    monkeypatch.setattr(bn_module, "_distributed_size", lambda: 1)
    cpu_run = _run(dn.device.backend_for("cpu"), x, dy, training=True)
    _assert_same(gpu_run, cpu_run)


@pytest.mark.parametrize("training", [False, True])
def test_the_reductions_allocate_nothing_after_the_first_step(monkeypatch, training):
    monkeypatch.setattr(bn_module, "_distributed_size", lambda: 2)
    x, dy = _case(n=9, c=4)
    gpu = dn.device.backend_for("gpu")
    layer, *_ = _run(gpu, x, dy, training=training, steps=1)
    kept = layer._sums
    with dn.use_backend(gpu):
        xd, dyd = gpu.asarray(x, "float64"), gpu.asarray(dy, "float64")
        with double.counting() as counts:
            layer.forward(xd, training=training)
            layer.backward(dyd)
    assert layer._sums is kept
    sites = counts.sites["alloc"]
    assert counts.alloc > 0, "the double must see the layer's other temporaries"
    bad = {site: n for site, n in sites.items()
           if any(f" {name}" in site.split(" < ")[0] for name in REDUCTION_SITES)}
    assert not bad, counts.where("alloc")
