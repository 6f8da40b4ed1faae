"""Benchmarks shipped with dualnn: ``dualnn bench`` compares a training step with PyTorch
eager and the GEMM-only lower bound (:mod:`~dualnn.benchmarks.compare`); the PyTorch side
runs in its own process (:mod:`~dualnn.benchmarks.torch_worker`); :mod:`~dualnn.benchmarks.timing`
holds the one timing helper; :mod:`~dualnn.benchmarks.bf16` is ``dualnn bench --precision
mixed_bfloat16`` (bfloat16 GEMMs on the CPU against PyTorch autocast) and
:mod:`~dualnn.benchmarks.mkl_layers` measures oneMKL's threading layers. Nothing here is imported by ``import dualnn``.
"""

from .compare import main

__all__ = ["main"]
