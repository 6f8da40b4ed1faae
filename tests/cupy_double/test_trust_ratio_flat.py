"""LARS and LAMB on the GPU path's flat buffers: one segmented step for all parameters.

A step is a fixed number of kernel launches whatever the parameter count, reads nothing
back to the host, allocates nothing after the first step, and gives the per-parameter
path's results (float64).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import dualnn as dn
from tests.cupy_double import double
from tests.cupy_double.helpers import BATCH, HIDDEN, IN, OUT, KernelLaunches, data

OPTIMIZERS = {
    "lars": lambda p: dn.optim.LARS(p, lr=0.5, weight_decay=1e-3, trust_coefficient=0.01),
    "lamb": lambda p: dn.optim.LAMB(p, lr=1e-2, weight_decay=0.01),
}


def _model(layers):
    sizes = [IN] + [HIDDEN] * (layers - 1) + [OUT]
    stack = []
    for a, b in itertools.pairwise(sizes):
        stack += [dn.layers.Linear(a, b, dtype="float64"), dn.layers.ReLU()]
    return dn.Sequential(*stack[:-1])


def _run(backend, name, layers=3, steps=3, on_step=None):
    """Train ``steps`` steps; ``on_step(i, optimizer)`` wraps each ``optimizer.step``."""
    x, y = data("softmax_cross_entropy", n=BATCH)
    with dn.use_backend(backend):
        dn.seed(11)
        model = _model(layers)
        opt = OPTIMIZERS[name](model.parameters())
        loss = dn.losses.SoftmaxCrossEntropy()
        xd, yd = backend.asarray(x, "float64"), backend.asarray(y)
        for i in range(steps):
            loss.forward(model.forward(xd, training=True), yd)
            model.backward(loss.backward())
            if on_step is None:
                opt.step()
            else:
                on_step(i, opt)
            opt.zero_grad()
    return model, opt


def _gpu(flat=True):
    backend = dn.backend.CupyBackend()
    backend.flat_parameters = flat
    return backend


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_step_is_three_launches_whatever_the_layer_count(name, monkeypatch):
    gpu = _gpu()
    per_parameter = f"{name}_update"

    def forbidden(*args, **kwargs):
        raise AssertionError(f"the per-parameter {per_parameter} ran on flat parameters")

    monkeypatch.setattr(type(gpu), per_parameter, forbidden)
    launches = KernelLaunches(monkeypatch)
    per_step = {}
    for layers in (1, 3):
        seen = per_step[layers] = []

        def step(i, opt, seen=seen):
            launches.names.clear()
            opt.step()
            seen.append(list(launches.names))

        _, opt = _run(gpu, name, layers=layers, on_step=step)
        assert opt._flat is not None and len(opt._flat.params) == 2 * layers
    first = per_step[1][0]
    assert len(first) == 3 and all(n.startswith("segmented_") for n in first), first
    for seen in per_step.values():
        assert all(names == first for names in seen)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_no_host_sync_and_no_allocation_after_the_first_step(name):
    counts = []

    def step(i, opt):
        with double.counting() as c:
            opt.step()
        counts.append(c)

    _run(_gpu(), name, steps=4, on_step=step)
    assert counts[0].alloc > 0  # state buffers, layout tables and scratch, once
    for c in counts[1:]:
        assert (c.sync, c.alloc) == (0, 0), (c, c.where("sync"), c.where("alloc"))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_results_equal_the_per_parameter_path(name, cpu_backend):
    flat_model, flat_opt = _run(_gpu(flat=True), name)
    loop_model, loop_opt = _run(_gpu(flat=False), name)
    cpu_model, _ = _run(cpu_backend, name)
    assert flat_opt._flat is not None and loop_opt.__dict__.get("_flat") is None
    host = [[m.backend.to_host(p.data) for p in m.parameters()]
            for m in (flat_model, loop_model, cpu_model)]
    for a, b, c in zip(*host):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(a, c, rtol=1e-9, atol=1e-11)
    flat_state = flat_opt.state_dict()["state"]
    loop_state = loop_opt.state_dict()["state"]
    for i in loop_state:
        assert flat_state[i].keys() == loop_state[i].keys()
        for key, value in loop_state[i].items():
            np.testing.assert_allclose(flat_state[i][key], value, rtol=1e-12, atol=1e-12)


def test_lamb_takes_the_inverse_scale_and_the_found_inf_flag_on_the_device():
    gpu = _gpu()
    rng = np.random.default_rng(2)
    offsets, adapt = (0, 12, 15, 40), (True, False, True)
    p, g = rng.standard_normal(40), rng.standard_normal(40)
    m, v = 0.1 * rng.standard_normal(40), np.abs(0.1 * rng.standard_normal(40))
    hyper = {"step": 2, "lr": 0.01, "weight_decay": 0.01}
    from dualnn.kernels.trust_ratio import reference

    want = reference.lamb_update_segmented(np, p, g, m, v, offsets=offsets, adapt=adapt,
                                           **hyper)
    arrays = [gpu.asarray(a, "float64") for a in (p, g * 256.0, m, v)]
    found = gpu.xp.zeros((1,), dtype=gpu.xp.int32)
    inv_scale = gpu.asarray(np.array([1 / 256]), "float64")
    gpu.lamb_update_segmented(*arrays, offsets=offsets, adapt=adapt, inv_scale=inv_scale,
                              found_inf=found, **hyper)  # compiles and copies the tables
    arrays = [gpu.asarray(a, "float64") for a in (p, g * 256.0, m, v)]
    with double.counting() as c:
        gpu.lamb_update_segmented(*arrays, offsets=offsets, adapt=adapt, inv_scale=inv_scale,
                                  found_inf=found, **hyper)
    assert (c.sync, c.alloc) == (0, 0), c
    assert gpu.to_host(found)[0] == 0
    for got, w in zip([arrays[0], arrays[2], arrays[3]], want[:3]):
        np.testing.assert_allclose(gpu.to_host(got), w, rtol=1e-12, atol=1e-15)
    bad = g.copy()
    bad[20] = np.nan
    arrays = [gpu.asarray(a, "float64") for a in (p, bad, m, v)]
    gpu.lamb_update_segmented(*arrays, offsets=offsets, adapt=adapt,
                              inv_scale=gpu.asarray(np.array([1.0]), "float64"),
                              found_inf=found, **hyper)
    assert gpu.to_host(found)[0] == 1
    np.testing.assert_array_equal(gpu.to_host(arrays[0]), p)
    np.testing.assert_array_equal(gpu.to_host(arrays[2]), m)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_without_fused_kernels_the_flat_step_runs_the_reference(name, cpu_backend,
                                                                 monkeypatch):
    launches = KernelLaunches(monkeypatch)
    gpu = dn.backend.CupyBackend(fused=False)
    assert gpu.flat_parameters
    model, opt = _run(gpu, name)
    assert opt._flat is not None
    assert not any(n.startswith("segmented_") for n in launches.names)
    cpu_model, _ = _run(cpu_backend, name)
    for p, q in zip(model.parameters(), cpu_model.parameters()):
        np.testing.assert_allclose(gpu.to_host(p.data), q.data, rtol=1e-9, atol=1e-11)
