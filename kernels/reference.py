"""Every reference twin in one namespace (``reference.activation_forward(xp, ...)``).

The definitions live with their op family (``kernels/<family>/reference.py``); this module
only gathers them for the Array API backend and for tests.
"""

from __future__ import annotations

from .activation.reference import (
                                   ACTIVATIONS,
                                   BACKWARD_FROM_OUTPUT,
                                   activation_backward,
                                   activation_forward,
                                   bias_activation_forward,
                                   sigmoid,
)
from .batchnorm.reference import batchnorm_backward, batchnorm_forward_eval, batchnorm_forward_train
from .binary_xent.reference import binary_xent_terms
from .optim.reference import (
                                   adadelta_update,
                                   adagrad_update,
                                   adam_update,
                                   rmsprop_update,
                                   sgd_update,
)
from .reduce.reference import column_sum
from .softmax_xent.reference import log_softmax, one_hot, softmax, softmax_cross_entropy

__all__ = [
                                   "ACTIVATIONS",
                                   "BACKWARD_FROM_OUTPUT",
                                   "activation_backward",
                                   "activation_forward",
                                   "adadelta_update",
                                   "adagrad_update",
                                   "adam_update",
                                   "batchnorm_backward",
                                   "batchnorm_forward_eval",
                                   "batchnorm_forward_train",
                                   "bias_activation_forward",
                                   "binary_xent_terms",
                                   "column_sum",
                                   "log_softmax",
                                   "one_hot",
                                   "rmsprop_update",
                                   "sgd_update",
                                   "sigmoid",
                                   "softmax",
                                   "softmax_cross_entropy",
]
