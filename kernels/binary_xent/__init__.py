"""Binary cross-entropy on logits: the loss terms and the gradient in one elementwise pass.

- :mod:`.reference` - the stable formulas over an Array API namespace ``xp`` (the twin);
- :mod:`.cpu` - a Numba kernel on NumPy arrays;
- :mod:`.cuda` - a Numba-CUDA grid-stride kernel (a :class:`~dualnn.kernels._cuda.
  KernelFamily`).

Each writes ``terms = max(z, 0) - z t + log1p(exp(-|z|))`` and ``grad = (sigmoid(z) - t)
* scale`` for logits ``z`` and targets ``t``; ``exp`` is only taken of ``-|z|``, so no
logit overflows. The caller sums ``terms`` (the loss). Nothing here imports Numba (or
``dualnn``) at import time.
"""
