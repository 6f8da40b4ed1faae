"""summary / estimate_memory / check_fits, and the estimate against measured allocations."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

import dualnn as dn
from dualnn.errors import ConfigurationError, DeviceMemoryError, DualnnError
from dualnn.memory import check_fits, estimate_memory, summary

TOLERANCE = 0.15
"""Estimate vs tracemalloc peak of a first training step on the NumPy backend."""


def _mlp(dropout=False, batchnorm=False):
    layers = [dn.layers.Linear(48, 256), dn.layers.ReLU()]
    if batchnorm:
        layers += [dn.layers.BatchNorm(256), dn.layers.ReLU()]
    if dropout:
        layers += [dn.layers.Dropout(0.2)]
    layers += [dn.layers.Linear(256, 128), dn.layers.ReLU(), dn.layers.Linear(128, 10)]
    return dn.Sequential(*layers)


def test_counts_and_table():
    model = _mlp()
    s = summary(model, batch_size=64)
    assert [r.parameters for r in s.rows] == [48 * 256 + 256, 0, 256 * 128 + 128, 0,
                                              128 * 10 + 10]
    assert s.total_parameters == sum(p.size for p in model.parameters())
    assert s.parameter_bytes == 4 * s.total_parameters
    text = str(s)
    assert "(64, 256)" in text and f"{s.total_parameters:,}" in text
    assert "<table>" in s._repr_html_()
    per_sample = summary(model)
    assert per_sample.activation_bytes * 64 == s.activation_bytes


def test_optimizer_state_and_precision():
    model = _mlp()
    p = sum(x.size for x in model.parameters()) * 4
    assert summary(model, 8, optimizer=dn.optim.LAMB(model.parameters())).optimizer_bytes \
        == 2 * p
    assert summary(model, 8, optimizer=dn.optim.LARS(model.parameters(), lr=1)) \
        .optimizer_bytes == p
    assert summary(model, 8, optimizer=dn.optim.SGD(model.parameters())).optimizer_bytes == 0
    full = summary(model, 128)
    half = summary(model, 128, precision="mixed_bfloat16")
    assert half.activation_bytes * 2 == full.activation_bytes
    assert half.parameter_bytes == full.parameter_bytes
    with pytest.raises(ConfigurationError):
        summary(model, 8, precision="int8")
    with pytest.raises(ConfigurationError):
        estimate_memory(model, 0)


def _step(model, opt, loss_fn, x, y):
    out = model.forward(x, training=True)
    loss_fn.forward(out, y)
    model.backward(loss_fn.backward(), input_grad=False)
    opt.step()
    opt.zero_grad()


def _measured_peak(make_model, make_optimizer, batch):
    """Peak traced bytes from building the model through one training step.

    A throwaway model takes a step first, untraced and at the same batch size (kernels
    above a size threshold get their own parallel build), so Numba compiles every kernel
    before tracing starts: compilation is not part of a step's memory.
    """
    rng = np.random.default_rng(0)
    host_x = rng.standard_normal((batch, 48)).astype(np.float32)
    host_y = rng.integers(0, 10, batch)
    loss_fn = dn.losses.SoftmaxCrossEntropy()
    warm = make_model()
    _step(warm, make_optimizer(warm), loss_fn, host_x.copy(), host_y.copy())
    del warm
    gc.collect()
    tracemalloc.start()
    try:
        model = make_model()
        opt = make_optimizer(model)
        gc.collect()
        tracemalloc.reset_peak()  # the initializer's host temporaries are gone by now
        x = host_x.copy()  # the "device copy" of the batch
        y = host_y.copy()
        _step(model, opt, loss_fn, x, y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, model, opt


@pytest.mark.parametrize("variant", ["plain-sgd", "lamb-dropout", "lars-batchnorm"])
def test_estimate_matches_measured_allocations(variant):
    batch = 4096
    make_model = {"plain-sgd": _mlp, "lamb-dropout": lambda: _mlp(dropout=True),
                  "lars-batchnorm": lambda: _mlp(batchnorm=True)}[variant]
    make_opt = {"plain-sgd": lambda m: dn.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
                "lamb-dropout": lambda m: dn.optim.LAMB(m.parameters()),
                "lars-batchnorm": lambda m: dn.optim.LARS(m.parameters(), lr=1.0)}[variant]
    with dn.use_backend(dn.backend.NumpyBackend()):
        peak, model, opt = _measured_peak(make_model, make_opt, batch)
        estimate = estimate_memory(model, batch, optimizer=opt)
    assert abs(estimate - peak) <= TOLERANCE * peak, (estimate, peak)


def test_check_fits_suggests_micro_batches():
    model = _mlp()
    opt = dn.optim.LAMB(model.parameters())
    need = estimate_memory(model, 8192, optimizer=opt)
    assert check_fits(model, 8192, opt, "float32", need) == need
    with pytest.raises(DeviceMemoryError, match="micro_batch_size=") as info:
        check_fits(model, 8192, opt, "float32", need // 3)
    assert isinstance(info.value, MemoryError) and isinstance(info.value, DualnnError)
    micro = int(str(info.value).split("micro_batch_size=")[1].split()[0])
    assert estimate_memory(model, micro, optimizer=opt) <= need // 3
    assert estimate_memory(model, 2 * micro, optimizer=opt) > need // 3
    with pytest.raises(DeviceMemoryError, match="even one sample"):
        check_fits(model, 8192, opt, "float32", 1000)
