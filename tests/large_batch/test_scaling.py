"""scale_lr and polynomial_decay."""

from __future__ import annotations

import math

import pytest

import dualnn as dn
from dualnn.errors import ConfigurationError
from dualnn.optim.scaling import polynomial_decay, scale_lr


@pytest.mark.parametrize("batch,base", [(8192, 256), (256, 256), (64, 256), (1000, 100)])
def test_scale_lr_rules(batch, base):
    assert scale_lr(0.1, batch, base) == pytest.approx(0.1 * batch / base)
    assert scale_lr(0.1, batch, base, rule="sqrt") == pytest.approx(0.1 * math.sqrt(batch / base))
    assert dn.optim.scale_lr is scale_lr


@pytest.mark.parametrize("kwargs,match", [({"rule": "cubic"}, "linear"),
                                          ({"batch_size": 0}, "batch_size"),
                                          ({"base_batch_size": 2.5}, "base_batch_size"),
                                          ({"lr": -1.0}, "lr")])
def test_scale_lr_errors(kwargs, match):
    args = {"lr": 0.1, "batch_size": 512, **kwargs}
    with pytest.raises(ConfigurationError, match=match):
        scale_lr(**args)


def test_polynomial_decay_warmup_then_decay():
    lrs = [polynomial_decay(s, 10, 1.0, warmup_steps=4) for s in range(12)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # after warmup: linear from 1 at step 4 to 0 at step 10, then stays at end_lr
    assert lrs[4:] == pytest.approx([1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0, 0.0])


def test_polynomial_decay_power_and_end_lr():
    assert polynomial_decay(5, 10, 2.0, end_lr=0.5, power=2.0) == pytest.approx(
        0.5 + 1.5 * 0.5 ** 2)
    assert polynomial_decay(0, 10, 2.0) == 2.0


@pytest.mark.parametrize("kwargs", [{"warmup_steps": 10}, {"power": 0.0}, {"step": -1},
                                    {"total_steps": 0}, {"end_lr": -0.1}])
def test_polynomial_decay_errors(kwargs):
    args = {"step": 0, "total_steps": 10, "base_lr": 1.0, **kwargs}
    with pytest.raises(ConfigurationError):
        polynomial_decay(**args)
