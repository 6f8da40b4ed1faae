"""Host allocation for long-lived arrays: large ones aligned to 2 MiB (huge pages).

NumPy asks Linux for transparent huge pages (``madvise(MADV_HUGEPAGE)``) on every
allocation of 4 MiB or more, but the kernel can only back the 2 MiB-aligned stretches
that lie wholly inside the allocation, and ``malloc`` returns addresses aligned to 16
bytes. Measured here (``python tools/measure_cpu_kernels.py``, section [5]): the fused
Adam update over four arrays of >= 4 MiB each streamed at ~30 GB/s from plain ``np.empty``
arrays and at ~65 GB/s from 2 MiB-aligned ones; below 4 MiB the two were alike.
:func:`aligned_empty` over-allocates by 2 MiB and returns the aligned view, so the whole
array lies in huge-page-eligible memory. Nothing changes where NumPy's huge-page advice
is off (``NUMPY_MADVISE_HUGEPAGE=0``) or the kernel's THP mode is ``never``: the array is
then just 2 MiB-aligned.
"""

from __future__ import annotations

import math

import numpy as np

HUGE_PAGE_BYTES = 1 << 21
"""Alignment of large arrays (the x86-64 and arm64 transparent huge page size)."""

ALIGN_FROM_BYTES = 1 << 22
"""Arrays this large or larger are aligned (NumPy's own huge-page threshold)."""


def huge_page_status():
    """One line on whether large arrays can get huge pages here (for ``dualnn info``).

    Reads the kernel's transparent-huge-page mode and NumPy's advice flag; the policy of
    this module applies either way.
    """
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="ascii") as f:
            modes = f.read().split()
        mode = next((m.strip("[]") for m in modes if m.startswith("[")), "unknown")
    except OSError:
        mode = "not available"
    try:
        try:
            from numpy._core.multiarray import _get_madvise_hugepage
        except ImportError:  # NumPy 1.x
            from numpy.core.multiarray import _get_madvise_hugepage
        advice = "on" if _get_madvise_hugepage() else "off"
    except (ImportError, AttributeError):
        advice = "unknown"
    usable = mode in ("always", "madvise") and advice != "off"
    return (f"{'yes' if usable else 'no'} (kernel THP mode: {mode}; NumPy madvise: {advice}; "
            f"arrays >= {ALIGN_FROM_BYTES >> 20} MiB aligned to "
            f"{HUGE_PAGE_BYTES >> 20} MiB)")


def aligned_empty(shape, dtype):
    """An uninitialized C-contiguous array; 2 MiB-aligned when it has >= 4 MiB.

    Parameters
    ----------
    shape : tuple of int
    dtype : numpy dtype or name

    Returns
    -------
    numpy.ndarray
        Writable, C-contiguous, owning its memory through ``.base`` when aligned.
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < ALIGN_FROM_BYTES:
        return np.empty(shape, dtype=dtype)
    raw = np.empty(nbytes + HUGE_PAGE_BYTES, dtype=np.uint8)
    offset = -raw.ctypes.data % HUGE_PAGE_BYTES
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def aligned_zeros(shape, dtype):
    """Like :func:`aligned_empty`, filled with zeros."""
    out = aligned_empty(shape, dtype)
    out.fill(0)
    return out
