"""Data pipeline: mini-batch loading over in-memory or memory-mapped arrays.

>>> loader = dn.data.DataLoader("X_train.npy", "y_train.npy", batch_size=128)  # doctest: +SKIP
>>> for xb, yb in loader: ...                                                   # doctest: +SKIP

Imports NumPy only, never CuPy.
"""

from .loader import DataLoader, check_finite_rows, open_array

__all__ = ["DataLoader", "check_finite_rows", "open_array"]
