"""Fused ops: one folder per op family (``activation``, ``batchnorm``, ``softmax_xent``,
``optim``), each with its ``reference`` (any array namespace), ``cpu`` (Numba) and ``cuda``
(Numba-CUDA) twins. :mod:`.cpu`, :mod:`.cuda` and :mod:`.reference` gather every family's
entry points; :mod:`.ops` is the one table of activation codes and dtypes. Importing any of
them imports neither Numba nor CUDA.
"""
