"""Softmax cross-entropy loss and its gradient.

``reference`` (any array namespace), ``cpu`` (Numba) and ``cuda`` (Numba-CUDA) twins.
Importing this package imports neither Numba nor CUDA.
"""
