"""BCE-on-logits terms and gradient as one Numba-CUDA grid-stride kernel, and its launcher.

Replaces a chain of ~14 CuPy elementwise launches (abs, exp, log1p, maximum, ...) by one
pass that reads ``z`` and ``t`` and writes ``terms`` and ``grad``; the caller reduces
``terms`` to the loss.
"""

from __future__ import annotations

import math

from .._cuda import (
    KernelFamily,
    check,
    dtype_constants,
    flat,
    grid_stride,
    numba_cuda,
    require_array,
    stream_for,
)

cuda = None
"""``numba.cuda`` once the kernels are made (a module global the simulator can swap)."""

SIGNATURES = {
    "binary_xent_terms": "void({f}[::1], {f}[::1], {a}, {f}[::1], {f}[::1])",
}
"""Explicit signature of the kernel (``{f}``, ``{a}``: float32 or float64)."""

HALF_DTYPES = {}
"""No 16-bit variants: the loss is computed in float32/float64 predictions."""


def _make_kernels(dtype_name):
    """The Python function of this family's kernel for one float dtype."""
    global cuda
    cuda = numba_cuda()
    _, zero, one, _ = dtype_constants(dtype_name)

    def binary_xent_terms(z, t, scale, terms, grad):
        """``terms = max(z, 0) - z t + log1p(e)``, ``grad = (exp(min(z, 0)) / (1 + e) - t)
        * scale`` with ``e = exp(-|z|)``; flat arrays."""
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, z.shape[0], stride):
            v = z[i]
            e = math.exp(-abs(v))
            positive = v if v > zero else zero  # noqa: FURB136 - max() needs a CUDA driver to type
            negative = v if v < zero else zero  # noqa: FURB136 - likewise; NaN terms stay NaN
            terms[i] = (positive - v * t[i]) + math.log1p(e)
            grad[i] = (math.exp(negative) / (one + e) - t[i]) * scale

    kernels = dict(locals())
    return {name: kernels[name] for name in SIGNATURES}


KERNELS = KernelFamily(_make_kernels, SIGNATURES, HALF_DTYPES)
"""This family's kernel: signature, Python function, compiled kernels."""


def binary_xent_terms(z, t, scale, *, terms, grad):
    """One launch: ``terms`` and ``grad`` of BCE on logits (see the reference twin).

    ``z``, ``t``, ``terms``, ``grad``: one shape, float32/float64, C-contiguous.
    Returns ``(terms, grad)``.
    """
    require_array("binary_xent_terms", "z", z)
    dtype = check("binary_xent_terms", {"z": (z, None), "t": (t, z.shape),
                                        "terms": (terms, z.shape), "grad": (grad, z.shape)})
    n = int(z.size)
    if n:
        blocks, threads = grid_stride(n)
        cast = dtype_constants(dtype)[0]
        KERNELS.compiled("binary_xent_terms", dtype)[blocks, threads, stream_for(z)](
            flat(z), flat(t), cast(scale), flat(terms), flat(grad))
    return terms, grad


__all__ = ["KERNELS", "binary_xent_terms"]
