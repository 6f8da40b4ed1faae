"""Column sums over the batch axis: reference, CPU, CUDA.

``column_sum`` (a bias gradient ``sum_n dy``; 16-bit rows summed in float32) and
``column_sums2`` (``sum_n a`` and ``sum_n a * b`` in one pass: batch norm's reductions
outside its fused kernels).

- :mod:`.reference` - ``xp.sum(a, axis=0)`` over an Array API namespace (the twin);
- :mod:`.cpu` - a Numba kernel on NumPy arrays: rows added in order (deterministic);
- :mod:`.cuda` - Numba-CUDA kernels (a :class:`~dualnn.kernels._cuda.KernelFamily`): the
  batch-norm reductions' 2-D scheme, partial sums per (row slice, feature) in a scratch
  buffer, then an ordered merge per feature. No atomics: the same inputs and scratch
  shape always give the same bits.

Nothing here imports Numba (or ``dualnn``) at import time.
"""
