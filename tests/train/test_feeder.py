"""The batch feeder of fit: streamed batches equal the DataLoader's, prefetching in a
thread keeps order and errors, and fit's results do not depend on it."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import dualnn as dn
from dualnn.data.loader import DataLoader
from dualnn.training import feeder


def _loader(n=23, batch=5, shuffle=True, noise=0.0, seed=0):
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((n, 3)), rng.integers(0, 4, n)
    return DataLoader(X, y, batch, shuffle=shuffle, rng=np.random.default_rng(seed),
                      input_noise=noise)


@pytest.mark.parametrize("shuffle, noise", [(True, 0.0), (False, 0.0), (True, 0.1)])
def test_streamed_batches_equal_the_loaders(shuffle, noise):
    backend = dn.backend.NumpyBackend()
    want = [(x.astype("float32"), y) for x, y in _loader(shuffle=shuffle, noise=noise)]
    source = feeder.feed(backend, _loader(shuffle=shuffle, noise=noise), "float32", True)
    assert not source.resident  # no device memory on the CPU
    got = list(source)
    assert [rows for _, _, rows in got] == [5, 5, 5, 5, 3]
    for (xd, yd, _), (x, y) in zip(got, want):
        np.testing.assert_array_equal(xd, x)
        np.testing.assert_array_equal(yd, y)
        assert xd.dtype == np.float32


def test_prefetch_keeps_order_and_runs_in_another_thread():
    threads = []

    def produce():
        for i in range(7):
            threads.append(threading.current_thread())
            yield i

    assert list(feeder._prefetch(produce())) == list(range(7))
    assert all(t is not threading.main_thread() for t in threads)


def test_prefetch_hands_errors_to_the_consumer_and_stops_when_closed():
    def failing():
        yield 1
        raise ValueError("bad batch file")

    with pytest.raises(ValueError, match="bad batch file"):
        list(feeder._prefetch(failing()))

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    items = feeder._prefetch(endless())
    assert next(items) == 0
    items.close()  # the consumer stops early: the producer thread must end
    count = len(produced)
    assert count < 10 and not any(t.name == "dualnn-batches" and t.is_alive()
                                  for t in threading.enumerate())


def test_fit_result_is_the_same_as_training_on_the_loaders_batches():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((40, 6)), rng.integers(0, 3, 40)

    def train(batches=None):
        dn.seed(2)
        model = dn.Sequential(dn.layers.Linear(6, 8), dn.layers.ReLU(), dn.layers.Linear(8, 3))
        opt = dn.optim.Adam(model.parameters(), lr=1e-2)
        loss = dn.losses.SoftmaxCrossEntropy()
        if batches is None:
            dn.fit(model, loss, opt, X, y, epochs=2, batch_size=8, progress=False)
        else:
            for _ in range(2):
                for xb, yb in DataLoader(X, y, 8, shuffle=True, rng=model.backend.host_rng):
                    loss.forward(model.forward(xb.astype("float32"), training=True), yb)
                    model.backward(loss.backward())
                    opt.step()
                    opt.zero_grad()
        return [p.data.copy() for p in model.parameters()]

    for a, b in zip(train(), train(batches=True)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_memory_mapped_data_is_read_in_a_background_thread(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "X.npy", rng.standard_normal((12, 3)))
    X = np.load(tmp_path / "X.npy", mmap_mode="r")
    backend = dn.backend.NumpyBackend()
    used = []
    original = feeder._prefetch

    def spy(iterable, depth=2):
        used.append(True)
        return original(iterable, depth)

    monkeypatch.setattr(feeder, "_prefetch", spy)
    loader = DataLoader(X, np.arange(12) % 3, 4, shuffle=False)
    got = [x for x, _, _ in feeder.feed(backend, loader, "float64", True)]
    assert used and len(got) == 3
    np.testing.assert_array_equal(np.concatenate(got), np.asarray(X))
    used.clear()
    in_memory = DataLoader(np.asarray(X), np.arange(12) % 3, 4, shuffle=False)
    list(feeder.feed(backend, in_memory, "float64", True))
    assert not used  # in-memory rows on the CPU: gathered inline
