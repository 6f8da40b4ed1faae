"""Every optimizer, option and loss on the GPU path equals the CPU backend's results."""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
from dualnn.optim import SGD, Adadelta, Adagrad, Adam, AdamW, RMSprop
from tests.cupy_double import double
from tests.cupy_double.helpers import assert_runs_match, explicit_steps

OPTIMIZERS = {
    "sgd": lambda p, **o: SGD(p, lr=0.1, **o),
    "sgd_momentum": lambda p, **o: SGD(p, lr=0.1, momentum=0.9, dampening=0.1, **o),
    "sgd_nesterov": lambda p, **o: SGD(p, lr=0.1, momentum=0.9, nesterov=True, **o),
    "sgd_weight_decay": lambda p, **o: SGD(p, lr=0.1, momentum=0.5, weight_decay=1e-2, **o),
    "adam": lambda p, **o: Adam(p, lr=1e-2, weight_decay=1e-3, **o),
    "adamw": lambda p, **o: AdamW(p, lr=1e-2, weight_decay=1e-2, **o),
    "rmsprop": lambda p, **o: RMSprop(p, lr=1e-2, **o),
    "rmsprop_centered_momentum": lambda p, **o: RMSprop(p, lr=1e-2, momentum=0.9,
                                                       centered=True, weight_decay=1e-3, **o),
    "adagrad": lambda p, **o: Adagrad(p, lr=0.1, lr_decay=0.01, weight_decay=1e-3, **o),
    "adadelta": lambda p, **o: Adadelta(p, lr=1.0, weight_decay=1e-3, **o),
}

OPTIONS = {
    "l1": {"l1": 1e-3},
    "max_norm": {"max_norm": 0.5},
    "clip_grad_norm": {"clip_grad_norm": 0.05},
    "all": {"l1": 1e-3, "max_norm": 0.5, "clip_grad_norm": 0.05},
}

LOSSES = ("mse", "binary_cross_entropy", "softmax_cross_entropy", "hinge")


def _gpu():
    return dn.device.backend_for("gpu")


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_matches_cpu(name, cpu_backend):
    make = OPTIMIZERS[name]
    gpu = explicit_steps(_gpu(), make)
    cpu = explicit_steps(cpu_backend, make)
    assert_runs_match(gpu, cpu)
    assert gpu[0][-1] < gpu[0][0]


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("name", ["sgd_momentum", "adam"])
def test_optimizer_options_match_cpu(name, option, cpu_backend):
    def make(params):
        return OPTIMIZERS[name](params, **OPTIONS[option])

    gpu = explicit_steps(_gpu(), make)
    cpu = explicit_steps(cpu_backend, make)
    assert_runs_match(gpu, cpu)
    if "max_norm" in OPTIONS[option]:
        for weight in gpu[1][::2]:  # Linear weights: rows within the bound
            assert np.linalg.norm(weight, axis=1).max() <= 0.5 + 1e-12


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_matches_cpu(loss, cpu_backend):
    gpu = explicit_steps(_gpu(), OPTIMIZERS["sgd"], loss_name=loss)
    cpu = explicit_steps(cpu_backend, OPTIMIZERS["sgd"], loss_name=loss)
    assert_runs_match(gpu, cpu)
    assert gpu[0][-1] < gpu[0][0]


def test_float32_batchnorm_model_matches_cpu(cpu_backend):
    gpu = explicit_steps(_gpu(), OPTIMIZERS["adam"], dtype="float32", batchnorm=True)
    cpu = explicit_steps(cpu_backend, OPTIMIZERS["adam"], dtype="float32", batchnorm=True)
    assert_runs_match(gpu, cpu, dtype="float32")


def test_gpu_runs_launch_the_cuda_kernels():
    from dualnn.kernels import cuda as ck

    with double.counting():
        explicit_steps(_gpu(), OPTIMIZERS["adam"], batchnorm=True, steps=1)
    launched = {key[0] for family in ck.FAMILIES.values() for key in family._compiled
                if key[1] == "float64"}
    assert {"adam_update", "bias_activation_forward", "softmax_cross_entropy_rows",
            "batchnorm_forward_partial", "batchnorm_backward_apply"} <= launched
