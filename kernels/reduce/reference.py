"""Reference column sum: a pure function over an Array API namespace ``xp``."""

from __future__ import annotations


def column_sum(xp, a):
    """``(n, c) -> (c,)``: the sum of each column over the rows (axis 0)."""
    return xp.sum(a, axis=0)


__all__ = ["column_sum"]
