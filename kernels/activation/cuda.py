"""The activation ops as Numba-CUDA kernels and their launchers (twins of ``reference.py``).

One grid-stride kernel serves forward with or without a bias, one the backward pass.
Launchers check their arguments once (:func:`dualnn.kernels._cuda.check`) and write into
the caller's ``out``, which may be the input (in place). Mixed precision: ``z``/``dy``/
``saved``/``out`` may be float16 or bfloat16 (uint16 bit patterns) with a float32 bias;
each element is widened to float32, computed on, and rounded once on store.
"""

from __future__ import annotations

import math

import numpy as np

from .._cuda import (
    KernelFamily,
    bit_casts,
    check,
    dtype_constants,
    flat,
    grid_stride,
    is_cupy,
    numba_cuda,
    require_array,
    stream_for,
)
from ..ops import BF16_HALF_MINUS_ONE as _HALF_MINUS_ONE
from ..ops import BF16_SHIFT as _SHIFT
from ..ops import (
    COMPUTE_DTYPE,
    ELU,
    FLOAT_DTYPES,
    IDENTITY,
    LEAKY_RELU,
    RELU,
    SIGMOID,
    TANH,
    activation_code,
)
from ..ops import F32_ABS_BITS as _ABS
from ..ops import F32_INF_BITS as _INF
from ..ops import F32_QUIET_BIT as _QUIET

_DTYPES = FLOAT_DTYPES + ("float16", "bfloat16")

cuda = None
"""``numba.cuda`` once the kernels are made. A module global (not a closure variable)
because the kernels name it and the simulator swaps that global for its own."""

_IDENTITY, _RELU, _LEAKY_RELU, _ELU, _SIGMOID, _TANH = (IDENTITY, RELU, LEAKY_RELU, ELU, SIGMOID,
                                                      TANH)


SIGNATURES = {
    "activation_backward": "void({f}[::1], {f}[::1], {f}[::1], int32, {a})",
    "bias_activation_forward": "void({f}[::1], {a}[::1], {f}[::1], int64, int32, {a}, int32)",
}
"""Explicit signature of each kernel below; ``{f}`` is the storage dtype of ``z``/``dy``/
``saved``/``out``, ``{a}`` the compute dtype (the bias stays float32 in the 16-bit
variants: it is a master weight)."""

HALF_DTYPES = {name: ("float16", "bfloat16") for name in SIGNATURES}
"""Both kernels also have float16 and bfloat16 (uint16 bits) variants: load, widen to
float32, compute, round on store."""

_ONE_BIT = np.uint32(1)


def _make_kernels(dtype_name):
    """The Python functions of this family's kernels for one float dtype."""
    global cuda
    cuda = numba_cuda()
    cast, zero, one, nan = dtype_constants(dtype_name)
    if dtype_name == "bfloat16":
        return _make_bfloat16_kernels()

    def activation_backward(dy, saved, out, kind, alpha):
        """``out = dy * f'(saved)`` elementwise over flat arrays; ``out`` may be ``dy``."""
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, dy.shape[0], stride):
            g = cast(dy[i])
            s = cast(saved[i])
            if kind == _RELU:
                r = g if s > zero else zero
            elif kind == _LEAKY_RELU:
                r = g if s > zero else alpha * g
            elif kind == _ELU:
                # not (s > 0) means s <= 0 or NaN, where min(s, 0) is s itself
                r = g if s > zero else g * (alpha * math.exp(s))
            elif kind == _SIGMOID:
                r = g * s * (one - s)
            elif kind == _TANH:
                r = g * (one - s * s)
            else:
                r = g
            out[i] = r

    def bias_activation_forward(z, b, out, features, kind, alpha, has_bias):
        """``out = act(z + b[col])`` over flat ``(n * features)`` arrays; ``out`` may be ``z``."""
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, z.shape[0], stride):
            v = cast(z[i])
            if has_bias:
                v = v + b[i % features]
            if kind == _RELU:
                r = zero if v < zero else v  # NaN passes through, as the reference
            elif kind == _LEAKY_RELU:
                r = v if v > zero else alpha * v
            elif kind == _ELU:
                r = v if v > zero else alpha * math.expm1(v)
            elif kind == _SIGMOID:
                e = math.exp(-abs(v))
                r = one / (one + e) if v >= zero else e / (one + e)
            elif kind == _TANH:
                r = math.tanh(v)
            else:
                r = v
            out[i] = r

    kernels = dict(locals())
    return {name: kernels[name] for name in SIGNATURES}


def _make_bfloat16_kernels():
    """The kernels for bfloat16 stored as uint16 bits, written out (a device function cannot
    be compiled to PTX without a GPU): widen on load (``bits << 16`` is the float32), compute
    in float32, round to nearest even on store with NaN kept quiet, exactly as
    :func:`dualnn.kernels.cast.reference.round_bfloat16` rounds."""
    zero = np.float32(0.0)
    one = np.float32(1.0)
    u16 = np.uint16
    u32 = np.uint32
    as_float, as_bits = bit_casts()

    def activation_backward(dy, saved, out, kind, alpha):
        """bfloat16 twin of the generic ``activation_backward``."""
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, dy.shape[0], stride):
            g = as_float(u32(dy[i]) << _SHIFT)
            s = as_float(u32(saved[i]) << _SHIFT)
            if kind == _RELU:
                r = g if s > zero else zero
            elif kind == _LEAKY_RELU:
                r = g if s > zero else alpha * g
            elif kind == _ELU:
                r = g if s > zero else g * (alpha * math.exp(s))
            elif kind == _SIGMOID:
                r = g * s * (one - s)
            elif kind == _TANH:
                r = g * (one - s * s)
            else:
                r = g
            bits = u32(as_bits(r))
            if (bits & _ABS) > _INF:
                bits = bits | _QUIET
            else:
                bits = bits + (_HALF_MINUS_ONE + ((bits >> _SHIFT) & _ONE_BIT))
            out[i] = u16(bits >> _SHIFT)

    def bias_activation_forward(z, b, out, features, kind, alpha, has_bias):
        """bfloat16 twin of the generic ``bias_activation_forward`` (``b`` is float32)."""
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, z.shape[0], stride):
            v = as_float(u32(z[i]) << _SHIFT)
            if has_bias:
                v = v + b[i % features]
            if kind == _RELU:
                r = zero if v < zero else v  # NaN passes through, as the reference
            elif kind == _LEAKY_RELU:
                r = v if v > zero else alpha * v
            elif kind == _ELU:
                r = v if v > zero else alpha * math.expm1(v)
            elif kind == _SIGMOID:
                e = math.exp(-abs(v))
                r = one / (one + e) if v >= zero else e / (one + e)
            elif kind == _TANH:
                r = math.tanh(v)
            else:
                r = v
            bits = u32(as_bits(r))
            if (bits & _ABS) > _INF:
                bits = bits | _QUIET
            else:
                bits = bits + (_HALF_MINUS_ONE + ((bits >> _SHIFT) & _ONE_BIT))
            out[i] = u16(bits >> _SHIFT)

    return {"activation_backward": activation_backward,
            "bias_activation_forward": bias_activation_forward}


KERNELS = KernelFamily(_make_kernels, SIGNATURES, HALF_DTYPES)
"""This family's kernels: signatures, Python functions, compiled kernels."""


def activation_backward(kind, dy, saved, alpha=0.0, *, out):
    """``out = dy * f'(.)``; see :func:`dualnn.kernels.reference.activation_backward`.

    ``out`` may be ``dy`` (in-place backward). Returns ``out``.
    """
    code = activation_code(kind)
    require_array("activation_backward", "dy", dy)
    shape = dy.shape
    dtype = check("activation_backward",
                   {"dy": (dy, None), "saved": (saved, shape), "out": (out, shape)},
                   allowed=_DTYPES)
    size = int(np.prod(shape, dtype=np.int64))
    if size:
        blocks, threads = grid_stride(size)
        kernel = KERNELS.compiled("activation_backward", dtype)
        kernel[blocks, threads, stream_for(dy)](flat(dy), flat(saved), flat(out), code,
                                                 alpha)
    return out


def bias_activation_forward(z, b, kind, alpha=0.0, *, out):
    """``out = act(z + b)`` for ``z`` of shape ``(n, c)``; ``b`` of shape ``(c,)`` or None.

    ``out`` may be ``z``. Returns ``out``.
    """
    code = activation_code(kind)
    require_array("bias_activation_forward", "z", z)
    if z.ndim != 2:
        raise ValueError(f"bias_activation_forward: z must be 2-D (batch, features), got "
                         f"shape {tuple(z.shape)}")
    n, c = z.shape
    dtype = check("bias_activation_forward", {"z": (z, None), "out": (out, z.shape)},
                  allowed=_DTYPES)
    if b is not None:
        check("bias_activation_forward", {"b": (b, (c,))}, COMPUTE_DTYPE[dtype])
    if n * c:
        zf = flat(z)
        blocks, threads = grid_stride(n * c)
        kernel = KERNELS.compiled("bias_activation_forward", dtype)
        kernel[blocks, threads, stream_for(z)](
            zf, _no_bias(z, dtype) if b is None else b, flat(out), c, code, alpha,
            int(b is not None))
    return out


def activation_forward(kind, z, alpha=0.0, *, out):
    """``out = act(z)`` elementwise, any shape (the bias kernel without a bias)."""
    code = activation_code(kind)
    require_array("activation_forward", "z", z)
    dtype = check("activation_forward", {"z": (z, None), "out": (out, z.shape)},
                  allowed=_DTYPES)
    size = int(np.prod(z.shape, dtype=np.int64))
    if size:
        zf = flat(z)
        blocks, threads = grid_stride(size)
        kernel = KERNELS.compiled("bias_activation_forward", dtype)
        kernel[blocks, threads, stream_for(z)](zf, _no_bias(z, dtype), flat(out), 1, code,
                                                alpha, 0)
    return out


def _no_bias(z, dtype):
    """A one-element placeholder for the unused bias argument (of the compute dtype).

    The 16-bit variants take a float32 bias, so ``z`` cannot stand in; one zero float32
    element per device is made on first use and kept (a launcher allocates nothing per call).
    """
    if COMPUTE_DTYPE[dtype] == dtype:
        return flat(z)[:1]
    if not is_cupy(z):
        return _NUMPY_PLACEHOLDER
    import cupy

    device = cupy.cuda.Device().id
    placeholder = _cupy_placeholders.get(device)
    if placeholder is None:
        placeholder = _cupy_placeholders.setdefault(device, cupy.zeros(1, dtype=np.float32))
    return placeholder


_NUMPY_PLACEHOLDER = np.zeros(1, np.float32)
_cupy_placeholders = {}
