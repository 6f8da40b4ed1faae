"""The one timing helper of the benchmarks (imports nothing but the standard library, so
the PyTorch worker, which must not import dualnn, uses it too)."""

from __future__ import annotations

import time

__all__ = ["time_calls"]


def time_calls(fn, steps=1, warmup=0):
    """Wall-clock seconds of ``steps`` calls of ``fn()``, after ``warmup`` untimed calls.

    Returns
    -------
    list of float, length ``steps``
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times
