"""Every CPU (Numba) entry point in one namespace, as the NumPy backend calls them.

The kernels live with their op family (``kernels/<family>/cpu.py``); importing this
module imports no Numba (each family builds its kernels on first call). All entry points
share one calling convention with :mod:`dualnn.kernels.cuda`: inputs positional,
caller-allocated outputs keyword-only (``out=``...), the same return values.
"""

from __future__ import annotations

from ._numba import (
                     BACKWARD_PARALLEL_THRESHOLD,
                     COMPUTE_PARALLEL_THRESHOLD,
                     FORWARD_PARALLEL_THRESHOLD,
                     PARALLEL_THRESHOLD,
                     cache_dir,
)
from ._ufunc_pool import split_ufunc
from .activation.cpu import activation_backward, activation_forward, bias_activation_forward
from .batchnorm.cpu import (
                     batchnorm_backward,
                     batchnorm_forward_eval,
                     batchnorm_forward_train,
                     batchnorm_scratch_shape,
)
from .binary_xent.cpu import binary_xent_terms
from .cast.cpu import bfloat16_bits, round_bfloat16, round_bfloat16_bits, round_float16
from .optim.cpu import adadelta_update, adagrad_update, adam_update, rmsprop_update, sgd_update
from .reduce.cpu import column_sum, column_sums2
from .softmax_xent.cpu import softmax_cross_entropy, softmax_cross_entropy_scratch

__all__ = [
                     "BACKWARD_PARALLEL_THRESHOLD",
                     "COMPUTE_PARALLEL_THRESHOLD",
                     "FORWARD_PARALLEL_THRESHOLD",
                     "PARALLEL_THRESHOLD",
                     "activation_backward",
                     "activation_forward",
                     "adadelta_update",
                     "adagrad_update",
                     "adam_update",
                     "batchnorm_backward",
                     "batchnorm_forward_eval",
                     "batchnorm_forward_train",
                     "batchnorm_scratch_shape",
                     "bfloat16_bits",
                     "bias_activation_forward",
                     "binary_xent_terms",
                     "cache_dir",
                     "column_sum",
                     "column_sums2",
                     "rmsprop_update",
                     "round_bfloat16",
                     "round_bfloat16_bits",
                     "round_float16",
                     "sgd_update",
                     "softmax_cross_entropy",
                     "softmax_cross_entropy_scratch",
                     "split_ufunc",
]
