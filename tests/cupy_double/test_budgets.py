"""Host-sync and device-allocation budgets of a warmed-up GPU training step.

Contract: a steady-state GPU training step performs 0 host synchronizations and allocates
0 new device arrays after the first step; opt-in features (gradient clipping, non-finite
checks, Hinge, evaluate) meet the same budget or make at most one documented read.

Budgets that hold today are plain tests. Those that do not are ``xfail(strict=True)``
with the count measured on the 8-16-4 model (per step, float64, batch 8) and its cause,
so fixing one turns its test into an XPASS failure: then drop the mark. Every test
prints its ``BUDGET`` line (``pytest -s``); ``python -m tests.cupy_double.budgets``
prints them all with the call sites.
"""

from __future__ import annotations

import functools

import pytest

from tests.cupy_double import budgets


@functools.cache
def measured(name):
    return budgets.SCENARIOS[name]()


def _xfail(reason):
    return pytest.mark.xfail(strict=True, reason=reason)


SYNC_BUDGETS = [
    ("explicit", 0),
    ("explicit_sgd_momentum", 0),
    ("explicit_mse", 0),
    ("explicit_bce", 0),
    ("explicit_batchnorm", 0),
    ("explicit_dropout", 0),
    ("explicit_l1", 0),
    ("explicit_max_norm", 0),
    ("fit", 0),
    ("explicit_label_check", 0),
    ("hinge", 0),
    ("clip_grad_norm", 0),
    ("check_finite", 1),       # the one documented read: all flags read together
    ("fit_check_finite", 1),   # loss and gradient flags, one read
    ("evaluate", 1),           # loss sum and correct count read together at the end
]


@pytest.mark.parametrize("name, budget", SYNC_BUDGETS)
def test_host_syncs_per_step(name, budget):
    result = measured(name)
    print(result.line())
    assert result.sync <= budget, repr(result)


_STEP_CORE = ("fresh model output (the caller keeps it: Sequential writes the last step "
              "into a reused buffer only when given out=, as fit does), fresh 0-d loss "
              "(likewise; fit reuses one), fresh dL/dx of the first Linear (input_grad=True)")

ALLOC_BUDGETS = [
    ("fit", 0),               # data on the device, output/loss/dlogits/accumulators reused
    ("fit_check_finite", 0),  # finiteness flags in reused buffers
    pytest.param("explicit", 0, marks=_xfail(f"3 allocs/step: {_STEP_CORE}")),
    pytest.param("explicit_sgd_momentum", 0, marks=_xfail(f"3 allocs/step: {_STEP_CORE}")),
    pytest.param("explicit_label_check", 0, marks=_xfail(
        f"3 allocs/step (the label range is kept in reused buffers): {_STEP_CORE}")),
    pytest.param("clip_grad_norm", 0, marks=_xfail(
        f"3 allocs/step (norm, factor and clipped gradients in reused buffers): "
        f"{_STEP_CORE}")),
    pytest.param("check_finite", 0, marks=_xfail(
        f"3 allocs/step (finiteness flags in reused buffers): {_STEP_CORE}")),
    pytest.param("explicit_mse", 0, marks=_xfail(
        "8 allocs/step: MSE.forward's astype of the target, diff, grad, diff*diff, sum, "
        "*scale (losses.py MSE) + output and dL/dx")),
    pytest.param("explicit_bce", 0, marks=_xfail(
        "25 allocs/step: BinaryCrossEntropy.forward builds ~9 temporaries (losses.py "
        "maximum/zeros_like/log1p/exp/abs) and reference.sigmoid ~9 more + the step core")),
    pytest.param("explicit_batchnorm", 0, marks=_xfail(
        "5 allocs/step: CudaKernelOps.batchnorm_forward_train allocates the mean and "
        "invstd the layer keeps for backward (cupy_backend.py _new; per-layer buffers "
        "would remove them) + the step core")),
    pytest.param("explicit_dropout", 0, marks=_xfail(
        "8 allocs/step: Dropout draws a fresh uniform array, compares, casts and scales "
        "(dropout.py forward) + the step core")),
    pytest.param("explicit_l1", 0, marks=_xfail(
        f"3 allocs/step (the L1 terms go into buffers the hook keeps): {_STEP_CORE}")),
    pytest.param("explicit_max_norm", 0, marks=_xfail(
        f"3 allocs/step (row norms in reused scratch): {_STEP_CORE}")),
    pytest.param("hinge", 0, marks=_xfail(
        "21 allocs/step: Hinge.forward builds one_hot, correct, margins, active, counts, "
        "grad temporaries (losses.py Hinge) + the step core")),
]


@pytest.mark.parametrize("name, budget", ALLOC_BUDGETS)
def test_device_allocations_per_step(name, budget):
    result = measured(name)
    print(result.line())
    assert result.alloc <= budget, repr(result)


def test_fit_copies_nothing_to_the_device_per_step():
    """The dataset fits on the device: uploaded once, batches gathered there."""
    result = measured("fit")
    assert result.h2d == 0, repr(result)


def test_fit_reads_a_bounded_number_of_values_per_epoch():
    """A one-step epoch: loss and correct count read together, once (no extra synchronize)."""
    result = measured("fit_epoch")
    print(result.line())
    assert result.sync <= 1, repr(result)
