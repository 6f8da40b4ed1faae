"""The activation ops as Numba kernels on NumPy arrays (twins of ``reference.py``).

========================  =========================================================
``activation_forward``    ``out = act(z)``, one pass
``bias_activation_forward`` ``out = act(z + b)``, one pass (``out`` may be ``z``)
``activation_backward``   ``out = dy * f'(saved)``, one pass (``out`` may be ``dy``)
========================  =========================================================

Arguments are checked once here (:func:`dualnn.kernels._numba.check`): float32 or
float64, one dtype, C-contiguous, the documented shapes; outputs writable and either the
very array named as their alias or disjoint from the inputs. Read-only inputs work.

When the output is its input's memory, a kernel runs a loop that reads and writes through
that one name: with two names for one array LLVM's runtime overlap check fails and its
scalar fallback runs (2.4-4x slower). Sigmoid, tanh and ELU take their ``exp`` / ``tanh``
/ ``expm1`` from NumPy's SIMD ufuncs (:mod:`dualnn.kernels._ufunc_pool`) between Numba
passes: Numba's own calls go to the scalar C library, ~12x slower per core. No kernel
uses ``fastmath``: NaN and infinities propagate as in the reference.
"""

from __future__ import annotations

import numpy as np

from .._numba import (
    BACKWARD_PARALLEL_THRESHOLD,
    FORWARD_PARALLEL_THRESHOLD,
    KernelSet,
    check,
    prange,
    same_memory,
    writable_input,
)
from .._ufunc_pool import scratch, split_ufunc
from ..ops import ELU, LEAKY_RELU, RELU, SIGMOID, TANH, activation_code

# Kernel sources: plain Python, compiled (serial and parallel) by _KERNELS on first use.


def _k_activation_forward(kind, z, alpha, out):
    # ReLU, LeakyReLU and identity; ELU, sigmoid and tanh take NumPy's SIMD exp/expm1/tanh
    # (activation_forward routes them to _simd_forward and the ELU passes).
    n = z.shape[0]
    zero = z.dtype.type(0)
    if kind == RELU:
        for i in prange(n):
            v = z[i]
            out[i] = zero if v < zero else v
    elif kind == LEAKY_RELU:
        for i in prange(n):
            v = z[i]
            out[i] = v if v > zero else alpha * v
    else:
        for i in prange(n):
            out[i] = z[i]


def _k_bias_activation_forward(kind, z, b, alpha):
    # In place on z, one row loop per kind so each inner loop vectorizes (a shared helper
    # called per row ran several times slower). In place through one name: with separate
    # input and output arguments that are the same array, LLVM's runtime alias check fails
    # and the scalar fallback loop runs (measured 4x slower).
    n, c = z.shape
    zero = z.dtype.type(0)
    if kind == RELU:
        for i in prange(n):
            zi = z[i]
            for j in range(c):
                v = zi[j] + b[j]
                zi[j] = zero if v < zero else v
    elif kind == LEAKY_RELU:
        for i in prange(n):
            zi = z[i]
            for j in range(c):
                v = zi[j] + b[j]
                zi[j] = v if v > zero else alpha * v
    else:  # identity (the wrapper routes ELU, sigmoid and tanh elsewhere)
        for i in prange(n):
            zi = z[i]
            for j in range(c):
                zi[j] = zi[j] + b[j]


def _k_bias_add(z, b, out, inplace):
    # out = z + b (b: one value per column), the first pass of _simd_forward; in place
    # through one name when out is z (see _k_bias_activation_forward).
    n, c = z.shape
    if inplace:
        for i in prange(n):
            zi = z[i]
            for j in range(c):
                zi[j] = zi[j] + b[j]
    else:
        for i in prange(n):
            zi = z[i]
            oi = out[i]
            for j in range(c):
                oi[j] = zi[j] + b[j]


def _k_nonpositive_part(z, out):
    # out = min(z, 0), NaN kept: the argument of exp/expm1 in the ELU passes.
    zero = z.dtype.type(0)
    for i in prange(z.shape[0]):
        v = z[i]
        out[i] = zero if v > zero else v


def _k_elu_from_expm1(z, e, alpha, out, inplace):
    # out = z where z > 0, else alpha * e (e = expm1(min(z, 0))); in place through one name
    # when out is z (see _k_bias_activation_forward).
    zero = z.dtype.type(0)
    if inplace:
        for i in prange(z.shape[0]):
            v = z[i]
            z[i] = v if v > zero else alpha * e[i]
    else:
        for i in prange(z.shape[0]):
            v = z[i]
            out[i] = v if v > zero else alpha * e[i]


def _k_elu_backward_from_exp(dy, z, e, alpha, out, inplace):
    # out = dy where z > 0, else dy * (alpha * e) (e = exp(min(z, 0))); in place on dy
    # through one name when out is dy.
    zero = z.dtype.type(0)
    if inplace:
        for i in prange(z.shape[0]):
            d = dy[i]
            dy[i] = d if z[i] > zero else d * (alpha * e[i])
    else:
        for i in prange(z.shape[0]):
            d = dy[i]
            out[i] = d if z[i] > zero else d * (alpha * e[i])


def _k_logistic_from_exp(e):
    # e = e / (1 + e) in place: the logistic function of v given e = exp(v); an overflowed
    # e = inf gives 1 (the exact value rounds to 1 wherever exp overflows), NaN stays NaN.
    one = e.dtype.type(1)
    inf = e.dtype.type(np.inf)
    for i in prange(e.shape[0]):
        v = e[i]
        e[i] = one if v == inf else v / (one + v)


def _k_activation_backward(kind, dy, saved, alpha, out):
    # One prange loop per kind (a loop per branch vectorizes; a blocked loop around a
    # shared helper ran ~1.5x slower on (4096, 1024) float32). ELU's needs exp: the wrapper
    # runs it as NumPy's SIMD exp between two Numba passes instead.
    zero = dy.dtype.type(0)
    one = dy.dtype.type(1)
    n = dy.shape[0]
    if kind == RELU:
        for i in prange(n):
            d = dy[i]
            out[i] = d if saved[i] > zero else zero
    elif kind == LEAKY_RELU:
        for i in prange(n):
            d = dy[i]
            out[i] = d if saved[i] > zero else alpha * d
    elif kind == SIGMOID:
        for i in prange(n):
            s = saved[i]
            out[i] = dy[i] * s * (one - s)
    elif kind == TANH:
        for i in prange(n):
            s = saved[i]
            out[i] = dy[i] * (one - s * s)
    else:
        for i in prange(n):
            out[i] = dy[i]


_KERNELS = KernelSet(globals(), kernels=(
    "activation_forward", "bias_activation_forward", "bias_add", "nonpositive_part",
    "elu_from_expm1", "elu_backward_from_exp", "logistic_from_exp", "activation_backward"))


def activation_forward(kind, z, alpha=0.0, *, out):
    """``out = act(z)`` elementwise.

    Parameters
    ----------
    kind : str
        One of :data:`dualnn.kernels.reference.ACTIVATIONS`.
    z : ndarray, any shape
        Pre-activation.
    alpha : float
        Negative slope of ``leaky_relu``; scale of ``elu``.
    out : ndarray, shape of ``z``
        Receives the result; may be ``z``.

    Returns
    -------
    out : ndarray
    """
    code = activation_code(kind)
    check(z, out, shapes=(z.shape, z.shape), outputs=(out,))
    if code in (SIGMOID, TANH):
        return _simd_forward(code, z, None, out)
    if code == ELU:
        z = writable_input(z)
        flat_z = z.reshape(-1)
        e = _elu_exp(np.expm1, flat_z, FORWARD_PARALLEL_THRESHOLD)
        _KERNELS.get("elu_from_expm1", z.size, FORWARD_PARALLEL_THRESHOLD)(
            flat_z, e, z.dtype.type(alpha), out.reshape(-1), same_memory(z, out))
        return out
    _KERNELS.get("activation_forward", z.size, FORWARD_PARALLEL_THRESHOLD)(
        code, z.reshape(-1), z.dtype.type(alpha), out.reshape(-1))
    return out


def bias_activation_forward(z, b, kind, alpha=0.0, *, out):
    """``out = act(z + b)``, the bias add and activation after a GEMM, in one pass.

    Parameters
    ----------
    z : ndarray, shape (n, c)
        ``x @ W.T``.
    b : ndarray, shape (c,), or None
        Bias broadcast over the rows; ``None`` skips the add.
    kind : str
        Activation (see :func:`activation_forward`).
    alpha : float
    out : ndarray, shape (n, c)
        Receives the result; may be ``z`` (in place after the GEMM).

    Returns
    -------
    out : ndarray
    """
    if b is None:
        return activation_forward(kind, z, alpha, out=out)
    code = activation_code(kind)
    if z.ndim != 2:
        raise ValueError(f"z must be 2-D (batch, features), got shape {z.shape}")
    check(z, b, out, shapes=(z.shape, (z.shape[1],), z.shape), outputs=(out,))
    if code in (SIGMOID, TANH):
        return _simd_forward(code, writable_input(z), b, out)  # bias_add may run in place
    if code == ELU:
        z = writable_input(z)  # bias_add may run in place on z
        _KERNELS.get("bias_add", z.size, FORWARD_PARALLEL_THRESHOLD)(z, b, out, same_memory(z, out))
        return activation_forward(kind, out, alpha, out=out)
    if not same_memory(z, out):
        np.copyto(out, z)  # the kernel works in place; dualnn's layers always call it so
    _KERNELS.get("bias_activation_forward", z.size, FORWARD_PARALLEL_THRESHOLD)(
        code, out, b, z.dtype.type(alpha))
    return out


def activation_backward(kind, dy, saved, alpha=0.0, *, out):
    """``out = dy * f'(.)`` elementwise, in one pass.

    Parameters
    ----------
    kind : str
        Activation. ``saved`` is its input ``z`` for ``relu``, ``leaky_relu`` and ``elu``,
        its output ``y`` for ``sigmoid``, ``tanh`` and ``identity``.
    dy, saved : ndarray, same shape
    alpha : float
    out : ndarray, shape of ``dy``
        Receives ``dz``; may be ``dy`` (in-place backward).

    Returns
    -------
    out : ndarray
    """
    code = activation_code(kind)
    check(dy, saved, out, shapes=(dy.shape,) * 3, outputs=(out,))
    if code == ELU:  # exp through NumPy's SIMD loop (see _simd_forward)
        dy = writable_input(dy)
        flat_z = saved.reshape(-1)
        e = _elu_exp(np.exp, flat_z, BACKWARD_PARALLEL_THRESHOLD)
        _KERNELS.get("elu_backward_from_exp", dy.size, BACKWARD_PARALLEL_THRESHOLD)(
            dy.reshape(-1), flat_z, e, dy.dtype.type(alpha), out.reshape(-1),
            same_memory(dy, out))
        return out
    _KERNELS.get("activation_backward", dy.size, BACKWARD_PARALLEL_THRESHOLD)(
        code, dy.reshape(-1), saved.reshape(-1), dy.dtype.type(alpha), out.reshape(-1))
    return out


def _simd_forward(code, z, b, out):
    r"""``out = act(z + b)`` for sigmoid and tanh through NumPy's SIMD ``exp`` / ``tanh``.

    Numba calls the scalar libm ``exp``/``tanh`` (PyPI's llvmlite has no vector math
    library): ~6 ns per element and core here, against ~0.5 ns for NumPy's SIMD loops. So
    a Numba pass adds the bias (if any), NumPy's ufunc runs on all cores
    (``split_ufunc``), and for sigmoid a last Numba pass divides:

    .. math::
        \sigma(v) = \frac{e}{1 + e}, \quad e = \exp(v)

    where ``exp`` overflows (``v`` above ~88.7 in float32, ~709.8 in float64) ``e = inf``
    gives exactly 1, as the reference's ``1 / (1 + exp(-v))`` rounds to; ``exp(-inf) = 0``
    gives 0 and NaN stays NaN.

    Parameters
    ----------
    code : SIGMOID or TANH
    z : ndarray, any shape (2-D ``(n, c)`` when ``b`` is given)
    b : ndarray, shape (c,), or None
    out : ndarray, shape of ``z``
        Receives the result; may be ``z``.
    """
    flat = out.reshape(-1)
    source = z.reshape(-1)
    if b is not None:
        _KERNELS.get("bias_add", out.size, FORWARD_PARALLEL_THRESHOLD)(z, b, out,
                                                                 same_memory(z, out))
        source = flat
    split_ufunc(np.tanh if code == TANH else np.exp, source, flat)
    if code == SIGMOID:
        _KERNELS.get("logistic_from_exp", out.size, FORWARD_PARALLEL_THRESHOLD)(flat)
    return out


def _elu_exp(ufunc, z, threshold):
    """``ufunc(min(z, 0))`` (``np.exp`` or ``np.expm1``) in this thread's scratch array."""
    e = scratch(z.size, z.dtype)
    _KERNELS.get("nonpositive_part", z.size, threshold)(z, e)
    return split_ufunc(ufunc, e)
