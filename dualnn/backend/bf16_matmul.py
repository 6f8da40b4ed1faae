"""bfloat16 GEMMs inside ``precision="mixed_bfloat16"`` on the CPU (the NumPy backend).

While a :class:`Bfloat16Gemms` context is active on a :class:`NumpyBackend`, its
``matmul`` and ``matmul_accumulate`` on float32 matrices run :func:`bf16_gemm.gemm`:
both operands rounded to bfloat16 (nearest, ties to even), products accumulated and
written in float32 — what ``torch.autocast("cpu", dtype=torch.bfloat16)`` does.

The operands' bfloat16 bit patterns come from a cache, so nothing is converted twice in
a step:

- the weights (registered by :meth:`Bfloat16Gemms.begin_step`) are converted at their
  first GEMM of the step, then reused by the backward GEMM (``dx = dy W``);
- an activation or gradient that mixed precision rounds anyway (``round_to_precision``)
  gets its bits from the same pass (:func:`kernels.cast.cpu.round_bfloat16_bits`) and is
  reused by the forward GEMM and the weight-gradient GEMM;
- anything else is converted at the GEMM.

The cache holds a reference to every float32 array it knows, keyed by its data pointer
and shape, so an address cannot be reused while it is cached; it is emptied at the next
:meth:`~Bfloat16Gemms.begin_step`. A cached array must not be written in place within a
step (the mixed-precision runner rounds into arrays of its own, and weights change only in
the optimizer step, after the GEMMs).

The rounded arrays and bits, and the outputs the backend allocates inside the context
(GEMM results, activation and batch-norm outputs and input gradients), live until the
next :meth:`~Bfloat16Gemms.begin_step`, which reuses their memory, as ``Sequential``
reuses its scratch buffers from step to step (a fresh 16 MB array costs its page faults
at every step): an array the runner returned (e.g. the model's output) is valid for the
step it came from.
"""

from __future__ import annotations

import contextlib

import numpy as np

from . import bf16_gemm


def _cast():
    global _CAST
    if _CAST is None:
        from ..kernels.cast import cpu

        _CAST = cpu
    return _CAST


_CAST = None


class Bfloat16Gemms:
    """The bfloat16-bits cache of one training loop (see the module docstring).

    Parameters
    ----------
    backend : NumpyBackend
        The backend whose GEMMs :meth:`active` switches to bfloat16.
    """

    def __init__(self, backend):
        self.backend = backend
        self._used = []  # buffers handed out this step
        self._free = {}  # (shape, dtype) -> buffers of the last step, free again
        self._bits = {}
        self._weights = {}
        self._deferred = {}
        self.conversions = 0
        """Operands converted at a GEMM (not found in the cache): for the tests."""

    @contextlib.contextmanager
    def active(self):
        """Within this block the backend's float32 GEMMs run in bfloat16 (and its bfloat16
        rounding also caches the bits)."""
        previous, self.backend._bf16_gemms = self.backend._bf16_gemms, self
        try:
            yield self
        finally:
            self.backend._bf16_gemms = previous

    def begin_step(self, weights):
        """Forget last step's bits; ``weights`` (float32 arrays) are this step's weights.

        The buffers handed out in the last step (rounded activations and gradients, bits)
        are reused in this one: fresh large arrays cost page faults at every step, as
        much as the rounding itself. Buffers the last step did not use are dropped."""
        self._bits.clear()
        self._deferred.clear()
        free = {}
        for a in self._used:
            free.setdefault((a.shape, a.dtype.str), []).append(a)
        self._free, self._used = free, []
        self._weights = {_key(w): w for w in weights if _key(w) is not None}

    def remember(self, a, bits):
        """Cache ``bits`` (uint16) as the bfloat16 bits of ``a`` (float32, C-contiguous)."""
        self._bits[_key(a)] = (a, bits)

    def defer(self, a):
        """Register ``a`` (C-contiguous float32) as stored in bfloat16 without rounding it:
        its readers round it, the GEMMs when they convert it to bits (one bits-only pass,
        cached) and the batch-norm kernels as they load it. The mixed-precision runner
        defers only arrays whose next reader is one of those. Returns ``a``."""
        self._deferred[_key(a)] = a
        return a

    def deferred(self, a):
        """Whether ``a`` was registered by :meth:`defer` this step."""
        key = _key(a)
        return key is not None and key in self._deferred

    def forget(self, a):
        """``a`` was overwritten: it holds float32 values again."""
        self._deferred.pop(_key(a), None)
        self._bits.pop(_key(a), None)

    def rounded(self, a):
        """``a`` (C-contiguous float32) rounded to bfloat16, as a new float32 array; its
        bits are cached for the GEMMs."""
        out = self._take(a.shape, "float32")
        bits = self._take(a.shape, "uint16")
        _cast().round_bfloat16_bits(a, out=out, bits=bits)
        self.remember(out, bits)
        return out

    def step_array(self, shape, dtype):
        """An uninitialized array valid until the next :meth:`begin_step` (then reused):
        the backend's outputs of GEMMs and fused ops inside this context."""
        return self._take(tuple(shape), dtype)

    def _take(self, shape, dtype):
        free = self._free.get((shape, np.dtype(dtype).str))
        a = free.pop() if free else self.backend.empty(shape, dtype)
        self._used.append(a)
        return a

    def operand(self, a):
        """The bfloat16 bits of the 2-D float32 ``a``, with ``a``'s layout (uint16)."""
        if a.flags.c_contiguous:
            return self._bits_of(a)
        if a.flags.f_contiguous:  # a transpose, e.g. W.T in forward, dy.T for dW
            return self._bits_of(a.T).T
        return self._bits_of(np.ascontiguousarray(a))

    def _bits_of(self, a):
        key = _key(a)
        hit = self._bits.get(key)
        if hit is not None:
            return hit[1]
        bits = self._take(a.shape, "uint16")
        _cast().bfloat16_bits(a, bits=bits)
        if key in self._weights or key in self._deferred:
            self._bits[key] = (a, bits)
        else:
            self.conversions += 1
        return bits

    def matmul(self, a, b, out=None, beta=0.0):
        """``a @ b`` (``beta=1``: added to ``out``) in bfloat16 with float32 accumulation."""
        if out is None:
            out = self._take((a.shape[0], b.shape[1]), "float32")
            beta = 0.0
        elif not (out.flags.c_contiguous and out.dtype == np.float32):
            result = bf16_gemm.gemm(self.operand(a), self.operand(b))
            if beta:
                out += result
            else:
                out[...] = result
            return out
        return bf16_gemm.gemm(self.operand(a), self.operand(b), out=out, beta=beta)


def takes(a, b):
    """Whether :meth:`Bfloat16Gemms.matmul` handles ``a @ b``: 2-D float32 NumPy arrays."""
    return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.ndim == 2
            and b.ndim == 2 and a.dtype == np.float32 and b.dtype == np.float32
            and a.shape[1] == b.shape[0])


def _key(a):
    """(data pointer, shape) of a C-contiguous array, else ``None``."""
    if not isinstance(a, np.ndarray) or not a.flags.c_contiguous:
        return None
    return (a.__array_interface__["data"][0], a.shape)
