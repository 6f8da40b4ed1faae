"""Marks for tests that need a real CUDA GPU (``tests/gpu``)."""

import pytest


def gpu_available():
    """Whether CuPy imports and sees a usable CUDA device."""
    try:
        import cupy

        return bool(cupy.cuda.is_available())
    except Exception:  # noqa: BLE001 - any import/driver failure means no GPU
        return False


REQUIRES_GPU = [pytest.mark.gpu,
                pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")]
"""``pytestmark = REQUIRES_GPU``: marked ``gpu``, skipped cleanly without one."""
