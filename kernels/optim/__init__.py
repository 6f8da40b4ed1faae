"""In-place optimizer updates: SGD, Adam/AdamW, RMSprop, Adagrad, Adadelta.

``reference`` (any array namespace), ``cpu`` (Numba) and ``cuda`` (Numba-CUDA) twins.
Importing this package imports neither Numba nor CUDA.
"""
