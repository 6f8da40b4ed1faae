"""fit's feeder on the GPU path: device-resident data when it fits, streamed otherwise;
both give the DataLoader's batches."""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
from dualnn.data.loader import DataLoader
from dualnn.training import feeder
from tests.cupy_double import double


def _loader(shuffle=True, noise=0.0):
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((23, 3)), rng.integers(0, 4, 23)
    return DataLoader(X, y, 5, shuffle=shuffle, rng=np.random.default_rng(0),
                      input_noise=noise)


@pytest.mark.parametrize("shuffle", [True, False])
def test_resident_batches_equal_the_loaders(shuffle):
    gpu = dn.device.backend_for("gpu")
    source = feeder.feed(gpu, _loader(shuffle), "float64", True)
    assert source.resident
    want = list(_loader(shuffle))
    # a batch lives in a reused slot until the next one is drawn: read each at once
    got = [(gpu.to_host(xd), gpu.to_host(yd), rows) for xd, yd, rows in source]
    assert [rows for _, _, rows in got] == [len(x) for x, _ in want]
    for (xd, yd, _), (x, y) in zip(got, want):
        np.testing.assert_array_equal(xd, x)
        np.testing.assert_array_equal(yd, y)


def test_resident_second_epoch_matches_the_loaders_second_epoch():
    gpu = dn.device.backend_for("gpu")
    loader, source = _loader(), feeder.feed(gpu, _loader(), "float64", True)
    for _ in range(2):
        want = list(loader)
        with double.counting() as counts:
            got = [(gpu.to_host(x), gpu.to_host(y)) for x, y, _ in source]
        for (x, y), (wx, wy) in zip(got, want):
            np.testing.assert_array_equal(x, wx)
            np.testing.assert_array_equal(y, wy)
    assert counts.h2d == 1  # the epoch's index array, nothing per batch


def test_large_data_or_noise_is_streamed(monkeypatch):
    gpu = dn.device.backend_for("gpu")
    assert not feeder.feed(gpu, _loader(noise=0.1), "float64", True).resident
    monkeypatch.setattr(feeder, "RESIDENT_FRACTION", 1e-12)
    source = feeder.feed(gpu, _loader(), "float64", True)
    assert not source.resident and isinstance(source, feeder.PinnedFeeder)
    with double.counting() as counts:
        got = [(gpu.to_host(xd), gpu.to_host(yd)) for xd, yd, _ in source]
    for (x, y), (wx, wy) in zip(got, _loader()):
        np.testing.assert_array_equal(x, wx)
        np.testing.assert_array_equal(y, wy)
    assert counts.h2d == 2 * len(got) and counts.h2d_pageable == 0  # from pinned slots


def test_fit_streamed_through_pinned_slots_matches_resident(monkeypatch):
    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((40, 8)), rng.integers(0, 4, 40)
    gpu = dn.device.backend_for("gpu")

    def train():
        with dn.use_backend(gpu):
            dn.seed(1)
            model = dn.Sequential(dn.layers.Linear(8, 16, dtype="float64"), dn.layers.ReLU(),
                                  dn.layers.Linear(16, 4, dtype="float64"))
            opt = dn.optim.Adam(model.parameters(), lr=1e-2)
            history = dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, X, y, epochs=2,
                             batch_size=16, progress=False)
        return history.history["loss"], [gpu.to_host(p.data) for p in model.parameters()]

    resident = train()
    monkeypatch.setattr(feeder, "RESIDENT_FRACTION", 1e-12)
    streamed = train()
    np.testing.assert_allclose(streamed[0], resident[0], rtol=1e-12)
    for a, b in zip(streamed[1], resident[1]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
