"""Column sums over the batch axis (a bias gradient ``sum_n dy``): reference, CPU, CUDA.

- :mod:`.reference` - ``xp.sum(a, axis=0)`` over an Array API namespace (the twin);
- :mod:`.cpu` - a Numba kernel on NumPy arrays: rows added in order (deterministic);
- :mod:`.cuda` - Numba-CUDA kernels (a :class:`~dualnn.kernels._cuda.KernelFamily`): the
  batch-norm reductions' 2-D scheme, partial sums per (row slice, feature) in a scratch
  buffer, then an ordered merge per feature. No atomics: the same inputs and scratch
  shape always give the same bits.

Nothing here imports Numba (or ``dualnn``) at import time.
"""
