"""Reference column sum: a pure function over an Array API namespace ``xp``."""

from __future__ import annotations


def column_sum(xp, a):
    """``(n, c) -> (c,)``: the sum of each column over the rows (axis 0)."""
    return xp.sum(a, axis=0)


def column_sums2(xp, a, b):
    """``(n, c), (n, c) -> (2 c,)``: the column sums of ``a``, then those of ``a * b``."""
    return xp.concat([xp.sum(a, axis=0), xp.sum(a * b, axis=0)])


__all__ = ["column_sum", "column_sums2"]
