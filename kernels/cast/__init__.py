"""Rounding float32 arrays to 16-bit precision (float16, bfloat16), kept in float32.

Mixed-precision training on a device without 16-bit arithmetic stores activations and
gradients "in 16 bits" by rounding them to the nearest 16-bit value while computing in
float32. ``reference`` (NumPy/CuPy namespaces) and ``cpu`` (Numba) twins. Importing this
package imports neither Numba nor CUDA.
"""
