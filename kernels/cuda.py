"""Every Numba-CUDA launcher in one namespace, plus the list of all CUDA kernels.

The kernels, their signatures and their launchers live with their op family
(``kernels/<family>/cuda.py``, each with a ``KERNELS`` :class:`~dualnn.kernels._cuda.
KernelFamily`); :data:`FAMILIES` is found by scanning the ``kernels`` package, so a new
family's kernels are listed (and compiled to PTX by the tests) without editing this
module. Importing it imports no ``numba.cuda``.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from ._cuda import config, numba_cuda, simulator_enabled  # noqa: F401 - re-exported
from .activation.cuda import activation_backward, activation_forward, bias_activation_forward
from .batchnorm.cuda import (
    batchnorm_backward,
    batchnorm_forward_eval,
    batchnorm_forward_train,
    batchnorm_scratch_shape,
)
from .binary_xent.cuda import binary_xent_terms
from .cast.cuda import round_bfloat16
from .ops import FLOAT_DTYPES, LABEL_DTYPES  # noqa: F401 - re-exported
from .optim.cuda import adadelta_update, adagrad_update, adam_update, rmsprop_update, sgd_update
from .reduce.cuda import (
    column_sum,
    column_sum_scratch_shape,
    column_sums2,
    column_sums2_scratch_shape,
)
from .softmax_xent.cuda import (
    softmax_cross_entropy,
    softmax_cross_entropy_scratch,
    softmax_cross_entropy_scratch_shape,
)


def _families():
    found = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.ispkg and (Path(__file__).parent / info.name / "cuda.py").exists():
            module = importlib.import_module(f"{__package__}.{info.name}.cuda")
            if hasattr(module, "KERNELS"):  # families not yet on KernelFamily are skipped
                found[info.name] = module.KERNELS
    return found


FAMILIES = _families()
"""``{family name: KernelFamily}`` of every op family with CUDA kernels."""


def _family_of(name):
    for family in FAMILIES.values():
        if name in family.signatures:
            return family
    raise KeyError(f"no CUDA kernel named {name!r}")


def signature(name, dtype, label_dtype="int64"):
    """The explicit Numba signature string of kernel ``name`` for ``dtype``."""
    return _family_of(name).signature(name, dtype, label_dtype)


def python_kernel(name, dtype):
    """The uncompiled Python function of kernel ``name`` for ``dtype``.

    ``cuda.compile_ptx(python_kernel(name, dtype), signature(name, dtype), cc=(8, 0))``
    compiles it for a real GPU without one.
    """
    return _family_of(name).python_kernel(name, dtype)


def kernel_variants():
    """Every ``(name, dtype, label_dtype or None)`` the launchers may compile."""
    return [v for family in FAMILIES.values() for v in family.variants()]


def compiled_kernel(name, dtype, label_dtype=None):
    """Kernel ``name`` compiled for its explicit ``dtype`` signature (cached)."""
    return _family_of(name).compiled(name, dtype, label_dtype)


def precompile(dtypes=FLOAT_DTYPES):
    """Compile every kernel for ``dtypes`` now (e.g. when a GPU backend is created)."""
    for name, dtype, label_dtype in kernel_variants():
        if dtype in dtypes:
            compiled_kernel(name, dtype, label_dtype)


__all__ = [
    "FAMILIES",
    "activation_backward",
    "activation_forward",
    "adadelta_update",
    "adagrad_update",
    "adam_update",
    "batchnorm_backward",
    "batchnorm_forward_eval",
    "batchnorm_forward_train",
    "batchnorm_scratch_shape",
    "bias_activation_forward",
    "binary_xent_terms",
    "column_sum",
    "column_sum_scratch_shape",
    "column_sums2",
    "column_sums2_scratch_shape",
    "compiled_kernel",
    "config",
    "kernel_variants",
    "precompile",
    "python_kernel",
    "rmsprop_update",
    "round_bfloat16",
    "sgd_update",
    "signature",
    "simulator_enabled",
    "softmax_cross_entropy",
    "softmax_cross_entropy_scratch",
    "softmax_cross_entropy_scratch_shape",
]
