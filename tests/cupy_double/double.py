"""The double's public face: install it, read its counters.

- :func:`install` / :func:`uninstall` — ``sys.modules["cupy"]`` becomes the double;
- :func:`counters` — totals since install (``{"sync": n, "alloc": n, ...}``);
- :func:`counting` — a context manager returning the :class:`~.counters.Counts` of a block.
"""

from __future__ import annotations

from .counters import KINDS, Counts, counters, counting
from .fake_cuda import DEVICE_COUNT
from .fake_cupy import install, is_pinned, real_cupy, uninstall

__all__ = ["DEVICE_COUNT", "KINDS", "Counts", "counters", "counting", "install", "is_pinned",
           "real_cupy", "uninstall"]
