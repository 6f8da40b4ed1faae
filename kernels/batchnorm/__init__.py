"""Batch normalization (+ fused ReLU): training and inference forward, backward.

``reference`` (any array namespace), ``cpu`` (Numba) and ``cuda`` (Numba-CUDA) twins.
Importing this package imports neither Numba nor CUDA.
"""
