"""A CuPy conformance double: dualnn's GPU path on every machine (tests only).

``install()`` makes ``import cupy`` return a NumPy-backed module that keeps CuPy 14's
rules (call signatures, no implicit host conversion, 0-d results) and counts host
synchronizations and device allocations; run under ``NUMBA_ENABLE_CUDASIM=1`` so the
Numba-CUDA kernels run in the simulator. See ``fake_cupy`` for what is patched.

>>> from tests.cupy_double import double
>>> double.install()
>>> with double.counting() as c:
...     ...  # a training step
>>> c.sync, c.alloc
"""
