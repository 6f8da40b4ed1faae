"""fit(micro_batch_size=...): gradient accumulation into one optimizer step, ghost batch
norm per micro-batch, the memory check before training and micro_batch_size="auto"."""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
from dualnn import layers as L
from dualnn import memory as summary
from dualnn.errors import ConfigurationError, DeviceMemoryError, ShapeError
from dualnn.training import accumulate


def _data(n=100, features=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, features))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)
    return X, y


def _mlp(batch_norm=False, ghost=None, dtype="float64"):
    dn.seed(3)
    layers = [L.Linear(6, 16, dtype=dtype)]
    if batch_norm:
        layers.append(L.BatchNorm(16, dtype=dtype, ghost_batch_size=ghost))
    layers += [L.ReLU(), L.Linear(16, 3, dtype=dtype)]
    return dn.Sequential(*layers)


def _train(micro, make_opt, loss=None, batch_norm=False, ghost=None, epochs=2, n=100,
           batch_size=32, **kw):
    model = _mlp(batch_norm, ghost)
    opt = make_opt(model.parameters())
    X, y = _data(n)
    hist = dn.fit(model, loss or dn.losses.SoftmaxCrossEntropy(), opt, X, y, epochs=epochs,
                  batch_size=batch_size, micro_batch_size=micro, progress=False, **kw)
    return model, hist


def _params(model):
    return [model.backend.to_host(p.data).copy() for p in model.parameters()]


OPTIMIZERS = {
    "sgd": lambda p: dn.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "adam": lambda p: dn.optim.Adam(p, lr=1e-2),
}


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("micro", [8, 5, 1])
def test_accumulated_step_equals_the_full_batch_step(opt, micro):
    """n=100, batch 32: windows of 32, 32, 32 and a short last one of 4 rows; every
    piece's mean loss is weighted by its rows over the rows actually in the window."""
    full, h_full = _train(None, OPTIMIZERS[opt])
    acc, h_acc = _train(micro, OPTIMIZERS[opt])
    for a, b in zip(_params(full), _params(acc)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(h_full["loss"], h_acc["loss"], rtol=1e-9)
    np.testing.assert_allclose(h_full["accuracy"], h_acc["accuracy"])


@pytest.mark.parametrize("micro", [None, 8, 5])
def test_fit_equals_a_hand_written_full_batch_loop(micro):
    """Independent reference: plain forward/backward/step on each batch of an unshuffled
    epoch, including the short last batch of 4 rows (its loss is the mean over 4)."""
    make = OPTIMIZERS["adam"]
    ref = _mlp()
    opt = make(ref.parameters())
    loss_fn = dn.losses.SoftmaxCrossEntropy()
    X, y = _data(100)
    for start in range(0, 100, 32):
        out = ref.forward(ref.backend.asarray(X[start:start + 32]), training=True)
        loss_fn.forward(out, ref.backend.asarray(y[start:start + 32]))
        ref.backward(loss_fn.backward())
        opt.step()
        opt.zero_grad()
    got, _ = _train(micro, make, epochs=1, shuffle=False)
    for a, b in zip(_params(ref), _params(got)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_sum_reduction_is_not_divided():
    loss = lambda: dn.losses.SoftmaxCrossEntropy(reduction="sum")
    full, h_full = _train(None, lambda p: dn.optim.SGD(p, lr=0.01), loss=loss())
    acc, h_acc = _train(7, lambda p: dn.optim.SGD(p, lr=0.01), loss=loss())
    for a, b in zip(_params(full), _params(acc)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(h_full["loss"], h_acc["loss"], rtol=1e-9)


def test_one_optimizer_step_per_batch_whatever_the_micro_batch():
    model = _mlp()
    opt = dn.optim.SGD(model.parameters(), lr=0.1)
    calls = []
    original = opt.step
    opt.step = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    X, y = _data(100)
    dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, X, y, epochs=2, batch_size=32,
           micro_batch_size=4, progress=False)
    assert len(calls) == 2 * 4  # ceil(100 / 32) steps per epoch, not 25 micro-steps


def test_batch_norm_statistics_are_per_micro_batch_as_ghost_batch_norm():
    """fit with micro-batches of 8 on an ordinary BatchNorm equals one pass over the
    whole batch with BatchNorm(ghost_batch_size=8): same weights and running stats."""
    make = OPTIMIZERS["sgd"]
    micro, _ = _train(8, make, batch_norm=True, n=96)
    ghost, _ = _train(None, make, batch_norm=True, ghost=8, n=96)
    plain, _ = _train(None, make, batch_norm=True, n=96)
    for a, b in zip(_params(micro), _params(ghost)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    for name in ("running_mean", "running_var"):
        np.testing.assert_allclose(getattr(micro[1], name), getattr(ghost[1], name),
                                   rtol=1e-9)
    assert max(np.max(np.abs(a - b)) for a, b in zip(_params(micro), _params(plain))) > 1e-4


def test_a_one_row_last_micro_batch_joins_the_previous_with_batch_norm():
    assert accumulate.micro_slices(33, 8, min_rows=2) == [(0, 8), (8, 16), (16, 24),
                                                          (24, 33)]
    assert accumulate.micro_slices(33, 8)[-1] == (32, 33)
    # batch 33 of 8-row micro-batches: the 1-row tail would make batch norm raise
    _, hist = _train(8, OPTIMIZERS["sgd"], batch_norm=True, n=99, batch_size=33)
    assert np.isfinite(hist["loss"]).all()


def test_one_row_micro_batches_with_batch_norm_are_refused_before_training():
    model = _mlp(batch_norm=True)
    before = _params(model)
    X, y = _data(40)
    with pytest.raises(ShapeError, match="micro_batch_size=1"):
        dn.fit(model, dn.losses.SoftmaxCrossEntropy(), dn.optim.SGD(model.parameters()),
               X, y, batch_size=8, micro_batch_size=1, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(before, _params(model)))


def test_bad_micro_batch_size():
    for bad in (0, -2, 2.5, True, "big"):
        with pytest.raises(ConfigurationError, match="micro_batch_size"):
            _train(bad, OPTIMIZERS["sgd"])


# ---------------------------------------------------------------------- memory

def _tiny_free_memory(monkeypatch, nbytes):
    monkeypatch.setattr(summary, "free_device_bytes", lambda backend: nbytes)


def test_a_step_that_does_not_fit_is_refused_before_anything_changes(monkeypatch):
    model = _mlp()
    opt = dn.optim.Adam(model.parameters(), lr=1e-2)
    before = _params(model)
    need_full = summary.estimate_memory(model, 32, opt)
    held = accumulate.held_bytes(model)
    assert held > 0
    _tiny_free_memory(monkeypatch, need_full - held - 1)
    X, y = _data(100)
    with pytest.raises(DeviceMemoryError, match="micro_batch_size=16") as info:
        dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, X, y, batch_size=32,
               progress=False)
    assert str(need_full) in str(info.value)
    assert all(np.array_equal(a, b) for a, b in zip(before, _params(model)))
    assert model.epochs_trained == 0 and all(not p.state for p in model.parameters())
    # the suggestion works
    hist = dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, X, y, batch_size=32,
                  micro_batch_size=16, progress=False)
    assert len(hist["loss"]) == 1


def test_auto_picks_the_largest_micro_batch_that_fits(monkeypatch):
    model = _mlp()
    opt = OPTIMIZERS["sgd"](model.parameters())
    budget = summary.estimate_memory(model, 11, opt)
    free = int(budget / accumulate.AUTO_HEADROOM) + 1 - accumulate.held_bytes(model)
    _tiny_free_memory(monkeypatch, free)
    chosen = accumulate.resolve_micro_batch(model, opt, 32, "auto",
                                            dn.precision.Precision())
    assert chosen == 11
    auto, _ = _train("auto", OPTIMIZERS["sgd"])
    explicit, _ = _train(11, OPTIMIZERS["sgd"])
    for a, b in zip(_params(auto), _params(explicit)):
        np.testing.assert_array_equal(a, b)


def test_auto_with_plenty_of_memory_is_one_pass_and_without_any_raises(monkeypatch):
    model = _mlp()
    opt = dn.optim.SGD(model.parameters(), lr=0.1)
    _tiny_free_memory(monkeypatch, 1 << 40)
    assert accumulate.resolve_micro_batch(model, opt, 32, "auto",
                                          dn.precision.Precision()) is None
    _tiny_free_memory(monkeypatch, 100)
    with pytest.raises(DeviceMemoryError):
        accumulate.resolve_micro_batch(model, opt, 32, "auto", dn.precision.Precision())


def test_free_host_bytes_reads_the_system():
    free = summary.free_device_bytes(dn.layers.Linear(2, 2).backend)
    assert isinstance(free, int) and free > 0


def test_device_side_loss_path_matches_the_checked_path():
    """check_finite=False (the GPU default) sums the loss on the device: same history."""
    checked, h1 = _train(6, OPTIMIZERS["sgd"], check_finite=True)
    device, h2 = _train(6, OPTIMIZERS["sgd"], check_finite=False)
    for a, b in zip(_params(checked), _params(device)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(h1["loss"], h2["loss"], rtol=1e-12)
    np.testing.assert_allclose(h1["accuracy"], h2["accuracy"])
