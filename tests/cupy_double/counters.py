"""What the CuPy double counts: host synchronizations, device allocations, transfers.

Every event is recorded with the first stack frame outside the double (``file:line in
function``), so a budget test can say *where* a sync or an allocation came from.

Kinds
-----
``sync``
    The host waited for the device: a device -> host read (``.get()``, ``cupy.asnumpy``,
    ``float()``, ``int()``, ``bool()``, ``.item()``, ``.tolist()``, printing, boolean-mask
    indexing, ``nonzero``) or an explicit ``synchronize()`` of a device, stream or event.
``alloc``
    A new device array that owns memory (creation, the result of an operation, a copy).
    Views (``reshape``, ``.T``, basic slicing) share memory and are not counted.
``pool_growth``
    New device memory: an allocation CuPy's memory pool cannot serve from a freed block
    of its (512-byte rounded) size, so it asks the device (``cudaMalloc``). An ``alloc``
    the pool serves from a freed block creates an array object but no new memory.
``h2d``
    A host -> device copy. ``h2d_pageable`` counts those from pageable (not pinned) host
    memory, for which CUDA synchronizes the stream before copying.
``d2h_async``
    A non-blocking device -> host copy (``get(blocking=False)``), which is no sync.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter

KINDS = ("sync", "alloc", "pool_growth", "h2d", "h2d_pageable", "d2h_async")

_HERE = os.path.dirname(os.path.abspath(__file__))
_totals = Counter()
_sites = {kind: Counter() for kind in KINDS}


def _short(frame):
    name = frame.f_code.co_filename
    for marker in ("dualnn" + os.sep, "kernels" + os.sep, "tests" + os.sep):
        cut = name.rfind(marker)
        if cut >= 0:
            name = name[cut:]
            break
    return f"{name}:{frame.f_lineno} {frame.f_code.co_name}"


def _in_library(frame):
    name = frame.f_code.co_filename
    return (os.sep + "dualnn" + os.sep in name or os.sep + "kernels" + os.sep in name) \
        and os.sep + "tests" + os.sep not in name


def _caller(depth=3):
    """The innermost frames outside this folder, ``inner < outer``: the first one, and up
    to ``depth - 1`` callers while they are inside dualnn (the cause, not just the site)."""
    frame = sys._getframe(2)
    while frame is not None and os.path.dirname(
            os.path.abspath(frame.f_code.co_filename)) == _HERE:
        frame = frame.f_back
    if frame is None:
        return "?"
    chain = [_short(frame)]
    frame = frame.f_back
    while frame is not None and len(chain) < depth and _in_library(frame):
        chain.append(_short(frame))
        frame = frame.f_back
    return " < ".join(chain)


def record(kind, count=1):
    """Count ``count`` events of ``kind`` at the caller's site."""
    _totals[kind] += count
    _sites[kind][_caller()] += count


def counters():
    """A snapshot ``{kind: total}`` of everything counted since the double was installed."""
    return {kind: _totals[kind] for kind in KINDS}


class Counts:
    """Events counted inside one :func:`counting` block.

    Attributes
    ----------
    sync, alloc, pool_growth, h2d, h2d_pageable, d2h_async : int
    sites : dict of str -> collections.Counter
        Per kind, ``{"file:line in function": count}``.
    """

    def __init__(self):
        for kind in KINDS:
            setattr(self, kind, 0)
        self.sites = {kind: Counter() for kind in KINDS}

    def where(self, kind):
        """The sites of ``kind`` as one line, most frequent first."""
        return "; ".join(f"{n}x {site}" for site, n in self.sites[kind].most_common())

    def __repr__(self):
        return "Counts(" + ", ".join(f"{k}={getattr(self, k)}" for k in KINDS) + ")"


@contextlib.contextmanager
def counting():
    """Record the double's events inside the ``with`` block into a :class:`Counts`."""
    before = dict(_totals)
    sites_before = {kind: Counter(c) for kind, c in _sites.items()}
    counts = Counts()
    try:
        yield counts
    finally:
        for kind in KINDS:
            setattr(counts, kind, _totals[kind] - before.get(kind, 0))
            counts.sites[kind] = _sites[kind] - sites_before[kind]
