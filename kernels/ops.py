"""The one table of what the fused ops accept: activation kinds and codes, dtypes.

Every reference, CPU and CUDA module and both backends read these names from here.
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS = ("identity", "relu", "leaky_relu", "elu", "sigmoid", "tanh")
"""Activation kinds understood by the activation ops; the position is the kernels' code."""

IDENTITY, RELU, LEAKY_RELU, ELU, SIGMOID, TANH = range(len(ACTIVATIONS))

ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}
"""Integer code of each activation kind, as the kernels receive it."""

BACKWARD_FROM_OUTPUT = ("sigmoid", "tanh", "identity")
"""Kinds whose derivative is computed from the activation's output; the rest use its input."""

FLOAT_DTYPES = ("float32", "float64")
"""Dtype names the fused kernels are compiled for."""

HALF_DTYPES = ("float16", "bfloat16")
"""16-bit storage dtypes of the mixed-precision CUDA variants: arrays between layers are
stored in 16 bits, every kernel computes and accumulates in float32 (:data:`COMPUTE_DTYPE`)."""

BFLOAT16_STORAGE = "uint16"
"""Array dtype holding bfloat16 values as bit patterns (the top 16 bits of a float32)."""

COMPUTE_DTYPE = {"float16": "float32", "bfloat16": "float32", "float32": "float32",
                 "float64": "float64"}
"""Dtype each kernel variant computes and accumulates in, by storage dtype."""

STORAGE_TYPE = {"float16": "float16", "bfloat16": BFLOAT16_STORAGE, "float32": "float32",
                "float64": "float64"}
"""Numba array element type of each variant's 16/32/64-bit storage arrays."""

LABEL_DTYPES = ("int32", "int64")
"""Label dtype names the CUDA softmax cross-entropy kernel is compiled for."""


def activation_code(kind):
    """The kernels' integer code of activation ``kind``.

    Raises
    ------
    ValueError
        ``kind`` is not one of :data:`ACTIVATIONS`.
    """
    try:
        return ACTIVATION_CODES[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {kind!r}; expected one of {ACTIVATIONS}") \
            from None


# float32 bit fields for the bfloat16 conversions done on bit patterns in the CUDA kernels
# (round to nearest even on the upper 16 bits; NaN kept quiet; inf unchanged).
F32_ABS_BITS = np.uint32(0x7FFFFFFF)
F32_INF_BITS = np.uint32(0x7F800000)
F32_QUIET_BIT = np.uint32(0x00400000)
BF16_HALF_MINUS_ONE = np.uint32(0x7FFF)
BF16_SHIFT = np.uint32(16)
