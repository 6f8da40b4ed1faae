"""Benchmarks shipped with dualnn: ``dualnn bench`` compares a training step with PyTorch
eager and the GEMM-only lower bound (:mod:`~dualnn.benchmarks.compare`); the PyTorch side
runs in its own process (:mod:`~dualnn.benchmarks.torch_worker`); :mod:`~dualnn.benchmarks.timing`
holds the one timing helper. Nothing here is imported by ``import dualnn``.
"""

from .compare import main

__all__ = ["main"]
