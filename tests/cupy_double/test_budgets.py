"""Host-sync and device-allocation budgets of a warmed-up GPU training step.

Contract: a steady-state GPU training step performs 0 host synchronizations and allocates
0 new device arrays after the first step; opt-in features (gradient clipping, non-finite
checks, Hinge, evaluate) meet the same budget or make at most one documented read.

Two counts per scenario (8-16-4 model, float64, batch 8, per step): ``alloc``, array
objects created, and ``pool_growth``, new device memory (a request CuPy's memory pool
cannot serve from a freed block of its size). The plain explicit loop creates exactly the
:data:`~tests.cupy_double.budgets.STEP_CORE` arrays it hands to the caller (output, 0-d
loss, ``dL/dx``), served by the pool from the previous step's freed blocks; written
allocation-free (``out=`` for the output and the loss, ``input_grad=False``, the
``<name>_out`` scenarios) it creates none. Every test prints its ``BUDGET`` line
(``pytest -s``); ``python -m tests.cupy_double.budgets`` prints them all with call sites.
"""

from __future__ import annotations

import functools

import pytest

from tests.cupy_double import budgets


@functools.cache
def measured(name):
    return budgets.SCENARIOS[name]()


ONE_READ = {"check_finite", "check_finite_out"}
"""The non-finite check's one documented read: every flag read together, once a step."""

SYNC_BUDGETS = (
    [(name, 1 if name in ONE_READ else 0) for name in budgets.EXPLICIT]
    + [(name + "_out", 1 if name + "_out" in ONE_READ else 0) for name in budgets.EXPLICIT]
    + [("fit", 0), ("fit_mse", 0), ("fit_bce", 0), ("fit_hinge", 0),
       ("fit_dropout_batchnorm", 0),
       ("fit_check_finite", 1),   # loss and gradient flags, one read
       ("evaluate", 1)]           # loss sum and correct count read together at the end
)


@pytest.mark.parametrize("name, budget", SYNC_BUDGETS)
def test_host_syncs_per_step(name, budget):
    result = measured(name)
    print(result.line())
    assert result.sync == budget, repr(result)


@pytest.mark.parametrize("name", list(budgets.EXPLICIT))
def test_plain_explicit_loop_creates_only_the_arrays_it_returns(name):
    """Output, 0-d loss and ``dL/dx`` (the caller may keep them); the losses' gradients,
    dropout masks and batch statistics live in reused arrays. The three are served from
    the blocks the previous step's arrays freed: no new device memory."""
    result = measured(name)
    print(result.line())
    assert result.alloc == budgets.STEP_CORE, repr(result)
    assert result.pool_growth == 0, repr(result)


@pytest.mark.parametrize("name", [name + "_out" for name in budgets.EXPLICIT])
def test_explicit_loop_written_allocation_free_creates_nothing(name):
    """``model.forward(x, out=...)``, ``loss.forward(y, t, out=...)``,
    ``model.backward(grad, input_grad=False)`` (docs/gpu_training.md)."""
    result = measured(name)
    print(result.line())
    assert result.alloc == 0, repr(result)
    assert result.pool_growth == 0, repr(result)


FIT = ["fit", "fit_check_finite", "fit_mse", "fit_bce", "fit_hinge", "fit_dropout_batchnorm"]


@pytest.mark.parametrize("name", FIT)
def test_fit_step_creates_nothing(name):
    """Data on the device; output, loss (every loss writes into fit's 0-d slot), loss
    gradient, dropout mask, batch statistics, the running-statistics snapshot,
    accumulators and flags in reused buffers."""
    result = measured(name)
    print(result.line())
    assert (result.alloc, result.pool_growth) == (0, 0), repr(result)


def test_pool_growth_counts_arrays_a_loop_keeps():
    """Keeping each step's loss (to read them all later) needs one new block a step: the
    counter sees what the array count alone cannot tell apart."""
    result = measured("explicit_keeping_losses")
    print(result.line())
    assert result.alloc == budgets.STEP_CORE, repr(result)
    assert result.pool_growth == 1, repr(result)


PER_CALL_SETUP = {"fit_epoch": 16, "evaluate": 15}
"""Arrays one ``fit`` epoch / ``evaluate`` call creates outside its steps (as measured:
data upload, feeder slots, running totals and their one read); none of them grows with the
number of steps (``test_fit_step_creates_nothing``), and the pool serves them all."""


@pytest.mark.parametrize("name", sorted(PER_CALL_SETUP))
def test_per_call_setup_is_bounded(name):
    result = measured(name)
    print(result.line())
    assert result.alloc <= PER_CALL_SETUP[name], repr(result)
    assert result.pool_growth == 0, repr(result)


def test_fit_copies_nothing_to_the_device_per_step():
    """The dataset fits on the device: uploaded once, batches gathered there."""
    result = measured("fit")
    assert result.h2d == 0, repr(result)


def test_fit_reads_a_bounded_number_of_values_per_epoch():
    """A one-step epoch: loss and correct count read together, once (no extra synchronize)."""
    result = measured("fit_epoch")
    print(result.line())
    assert result.sync <= 1, repr(result)
