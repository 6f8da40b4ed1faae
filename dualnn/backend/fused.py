"""The one check a backend runs before a fused kernel: can the kernel take these arrays?

Kernels validate their own arguments (and raise on bad ones); a backend only has to decide
whether to call the kernel or run the reference math instead, so results never depend on
the path. :class:`FusedDispatch` gives both device backends that decision in one place.
"""

from __future__ import annotations

import numpy as np

from ..kernels.ops import BFLOAT16_STORAGE, COMPUTE_DTYPE, FLOAT_DTYPES

_KERNEL_DTYPES = {np.dtype(name): name for name in FLOAT_DTYPES}
"""dtype -> name for the dtypes kernels take (``np.dtype.name`` costs ~5 us per call)."""

_HALF_DTYPES = {np.dtype("float16"): "float16", np.dtype(BFLOAT16_STORAGE): "bfloat16"}
"""dtype -> kernel dtype name of the 16-bit storage an op may opt into (``half=``);
uint16 arrays are bfloat16 bit patterns."""


def _partial_overlap(a, out):
    """True when NumPy arrays ``a`` and ``out`` share memory without being the same array
    (or another view of exactly the same memory): the one aliasing kernels do not support."""
    if a is out or not (isinstance(a, np.ndarray) and isinstance(out, np.ndarray)):
        return False
    if not np.may_share_memory(a, out):
        return False
    same = (a.shape == out.shape and a.__array_interface__["data"][0]
            == out.__array_interface__["data"][0])
    return not same


class FusedDispatch:
    """Mixin for backends with fused kernels (needs ``self.fused`` and ``self.owns``)."""

    def _kernel_takes(self, inputs, outputs=(), params=(), param_outputs=(), half=()):
        """The common dtype name (``"float32"``/``"float64"``, or one of ``half``) if the
        kernels take these arrays, else ``None`` (run the reference math).

        Parameters
        ----------
        inputs, outputs : sequence of (array or None, shape tuple or None)
            Arrays the kernel reads / writes, each with the shape (a tuple) it must have
            (``None``: any). ``None`` arrays are skipped.
        params, param_outputs : sequence of (array or None, shape tuple or None)
            Arrays read / written in the *compute* dtype of the data: the data's dtype for
            float32/float64, float32 for 16-bit data (master weights, statistics, loss).
        half : tuple of str
            16-bit storage dtypes this op's kernels also take for ``inputs``/``outputs``
            (``"float16"``; ``"bfloat16"`` as uint16 bit patterns). Empty: float32/float64
            only.

        Every array must be owned by this backend, C-contiguous, of its dtype and of its
        shape; outputs must be writable and either the very memory of an input (in place)
        or disjoint from every input.
        """
        if not self.fused:
            return None
        dtype = self._common_dtype(inputs, outputs, half)
        if dtype is None:
            return None
        if params or param_outputs:
            compute = np.dtype(COMPUTE_DTYPE[dtype])
            for a, shape in (*params, *param_outputs):
                if a is not None and (not self.owns(a) or not a.flags.c_contiguous
                                      or a.dtype != compute
                                      or (shape is not None and a.shape != shape)):
                    return None
        reads = (*inputs, *params)
        for out, _ in (*outputs, *param_outputs):
            if out is None:
                continue
            if not getattr(out.flags, "writeable", True):
                return None
            for a, _ in reads:
                if a is not None and a is not out and _partial_overlap(a, out):
                    return None
        return dtype

    def _common_dtype(self, inputs, outputs, half):
        """The one kernel dtype name of every (owned, contiguous, shaped) array, or None."""
        owns = self.owns
        dtype = None
        for group in (inputs, outputs):
            for a, shape in group:
                if a is None:
                    continue
                if not owns(a) or not a.flags.c_contiguous:
                    return None
                name = _KERNEL_DTYPES.get(a.dtype)
                if name is None and half:
                    name = _HALF_DTYPES.get(a.dtype)
                    if name not in half:
                        return None
                if name is None or (dtype is not None and name != dtype):
                    return None
                if shape is not None and a.shape != shape:
                    return None
                dtype = name
        return dtype

    def _update_takes(self, param, grad, *state):
        """Whether an optimizer kernel takes ``param`` (updated in place), ``grad`` and the
        state arrays (updated in place; ``None`` entries skipped), all of one shape."""
        shape = param.shape
        return self._kernel_takes([(grad, shape)],
                                  [(param, None)] + [(a, shape) for a in state]) is not None
