"""Per-optimizer-step schedules: PolynomialDecay and LinearWarmup(warmup_steps=...)."""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
from dualnn.callbacks import LinearWarmup, PolynomialDecay, optimizer_steps
from dualnn.errors import ConfigurationError
from dualnn.optim.scaling import polynomial_decay
from dualnn.parameter import Parameter
from dualnn.precision import LossScaler
from dualnn.training import TrainingRun

ROWS, BATCH = 40, 8  # 5 optimizer steps per epoch


def _data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((ROWS, 4))
    y = rng.integers(0, 3, ROWS)
    return X, y


class RecordingSGD(dn.optim.SGD):
    """SGD that remembers the learning rate of every step it takes."""

    def step(self, check_finite=False):
        self.rates = getattr(self, "rates", [])
        self.rates.append(self.lr)
        super().step(check_finite)


def _fit(model, opt, epochs, callbacks):
    X, y = _data()
    return dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, X, y, epochs=epochs,
                  batch_size=BATCH, progress=False, callbacks=callbacks)


def _model():
    dn.seed(0)
    return dn.Sequential(dn.layers.Linear(4, 6), dn.layers.ReLU(), dn.layers.Linear(6, 3))


def _expected_warmup(index, base, warmup, start_factor):
    if index < warmup:
        return base * (start_factor + (1 - start_factor) * index / warmup)
    return base


def test_polynomial_decay_sets_every_step_from_the_formula():
    model = _model()
    opt = RecordingSGD(model.parameters(), lr=0.2)
    schedule = PolynomialDecay(total_steps=12, end_lr=0.01, power=2.0, warmup_steps=3)
    history = _fit(model, opt, 3, [schedule])
    steps = 3 * ROWS // BATCH
    assert len(opt.rates) == steps == optimizer_steps(opt)
    want = [polynomial_decay(i, 12, 0.2, 0.01, 2.0, 3) for i in range(steps)]
    assert opt.rates == pytest.approx(want)
    # written out: warmup (i + 1) / 3, then (1 - progress)^2 down to end_lr after step 12
    assert opt.rates[:4] == pytest.approx([0.2 / 3, 0.4 / 3, 0.2, 0.01 + 0.19])
    assert opt.rates[12:] == pytest.approx([0.01] * (steps - 12))
    # the logged lr of an epoch is that of its first step
    assert history["lr"] == pytest.approx([want[0], want[5], want[10]])


def test_linear_warmup_per_step_then_a_schedule_counted_in_steps():
    model = _model()
    opt = RecordingSGD(model.parameters(), lr=0.1)
    then = dn.callbacks.ExponentialLR(gamma=0.5)
    _fit(model, opt, 2, [LinearWarmup(warmup_steps=4, start_factor=0.25, then=then)])
    want = [_expected_warmup(i, 0.1, 4, 0.25) if i < 4 else 0.1 * 0.5 ** (i - 4)
            for i in range(10)]
    assert opt.rates == pytest.approx(want)


def test_resumed_run_continues_the_step_count():
    model = _model()
    opt = RecordingSGD(model.parameters(), lr=0.3)
    schedule = PolynomialDecay(total_steps=10)
    _fit(model, opt, 1, [schedule])
    _fit(model, opt, 1, [schedule])
    assert opt.rates == pytest.approx([polynomial_decay(i, 10, 0.3) for i in range(10)])


def test_skipped_steps_do_not_advance_the_schedule():
    backend = dn.backend.NumpyBackend()
    params = [Parameter(backend.store(np.ones((2, 2))), backend, name="w")]
    opt = RecordingSGD(params, lr=1.0)
    run = TrainingRun(None, opt, None, None, 1, 1)
    schedule = PolynomialDecay(total_steps=4)
    scaler = LossScaler(init_scale=2.0)
    grads = [np.ones((2, 2)), np.full((2, 2), np.inf), np.ones((2, 2))]
    for g in grads:
        params[0].grad = backend.store(g.copy())
        schedule.on_step_begin(run, optimizer_steps(opt))
        scaler.step(opt)
        scaler.update()
    # three attempts, the overflowing one skipped: two steps, the 2nd at step index 1
    assert optimizer_steps(opt) == 2
    assert opt.rates == pytest.approx([1.0, 0.75])
    assert opt.lr == pytest.approx(0.75)


def test_epoch_schedules_ignore_the_step_hook():
    backend = dn.backend.NumpyBackend()
    opt = dn.optim.SGD([Parameter(backend.zeros((2,)), backend, name="b")], lr=1.0)
    run = TrainingRun(None, opt, None, None, 1, 1)
    schedule = dn.callbacks.ExponentialLR(gamma=0.5)
    schedule.on_step_begin(run, 3)
    assert opt.lr == 1.0
    schedule.on_epoch_begin(run, 3)
    assert opt.lr == pytest.approx(0.25)


@pytest.mark.parametrize("make", [
    lambda: LinearWarmup(),
    lambda: LinearWarmup(2, warmup_steps=3),
    lambda: LinearWarmup(warmup_steps=0),
    lambda: LinearWarmup(warmup_epochs=2, then=PolynomialDecay(5)),
    lambda: PolynomialDecay(total_steps=0),
    lambda: PolynomialDecay(total_steps=5, warmup_steps=5),
    lambda: PolynomialDecay(total_steps=5, power=0.0),
    lambda: PolynomialDecay(total_steps=5, end_lr=-1.0),
])
def test_bad_schedules_raise(make):
    with pytest.raises(ConfigurationError):
        make()
