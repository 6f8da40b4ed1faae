"""The one check a backend runs before a fused kernel: can the kernel take these arrays?

Kernels validate their own arguments (and raise on bad ones); a backend only has to decide
whether to call the kernel or run the reference math instead, so results never depend on
the path. :class:`FusedDispatch` gives both device backends that decision in one place.
"""

from __future__ import annotations

import numpy as np

from ..kernels.ops import FLOAT_DTYPES


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

    def _kernel_takes(self, inputs, outputs=()):
        """The common dtype name (``"float32"``/``"float64"``) if the kernels take these
        arrays, else ``None`` (run the reference math).

        Parameters
        ----------
        inputs, outputs : sequence of (array or None, shape tuple or None)
            Arrays the kernel reads / writes, each with the shape it must have (``None``:
            any). ``None`` arrays are skipped.

        Every array must be owned by this backend, C-contiguous, of one float dtype and
        of its shape; outputs must be writable and either the very memory of an input (in
        place) or disjoint from every input.
        """
        if not self.fused:
            return None
        dtype = None
        for a, shape in (*inputs, *outputs):
            if a is None:
                continue
            if not self.owns(a) or not a.flags.c_contiguous:
                return None
            name = np.dtype(a.dtype).name
            if name not in FLOAT_DTYPES or (dtype is not None and name != dtype):
                return None
            if shape is not None and tuple(a.shape) != tuple(shape):
                return None
            dtype = name
        for out, _ in outputs:
            if out is None:
                continue
            if not getattr(out.flags, "writeable", True):
                return None
            if any(_partial_overlap(a, out) for a, _ in inputs if a is not None):
                return None
        return dtype
