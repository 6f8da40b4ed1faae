"""Layer-wise trust-ratio optimizers (LARS, LAMB): reference math, Numba CPU and CUDA kernels.

Each op rescales a whole parameter's update by a ratio of two L2 norms, so unlike the
elementwise optimizer kernels (``kernels/optim``) it needs a reduction over the parameter
before the update:

- :mod:`.reference` - pure functions over an Array API namespace ``xp`` (the twins);
- :mod:`.cpu` - Numba kernels on NumPy arrays (built with :mod:`dualnn.kernels._numba`):
  one pass that updates the state and accumulates both squared norms in float64, one
  pass that applies the step;
- :mod:`.cuda` - Numba-CUDA kernels (a :class:`~dualnn.kernels._cuda.KernelFamily`): a
  grid-stride pass with per-block partial sums, a one-thread merge of the partials in
  block order (deterministic, no atomics) that leaves the ratio on the device, and an
  apply pass that reads it there.

Nothing here imports Numba (or ``dualnn``) at import time.
"""
