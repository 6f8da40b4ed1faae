"""CuPy-double tests: dualnn's GPU path on the CuPy double, kernels in Numba's simulator.

They run in their own process with ``NUMBA_ENABLE_CUDASIM=1`` and ``DUALNN_CUPY_DOUBLE=1``
(``tests/test_cupy_double_suite.py`` starts it)::

    NUMBA_ENABLE_CUDASIM=1 DUALNN_CUPY_DOUBLE=1 python -m pytest tests/cupy_double -q

The double replaces ``cupy`` in ``sys.modules`` when this file is imported, before any
test imports dualnn's GPU backend; without both variables the folder is not collected.
"""

from __future__ import annotations

import os

import pytest

ENABLED = (os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() == "1"
           and os.environ.get("DUALNN_CUPY_DOUBLE", "0").strip() == "1")

if ENABLED:
    from tests.cupy_double import double

    double.install()
else:
    collect_ignore_glob = ["test_*.py"]


def pytest_configure(config):
    config.addinivalue_line("filterwarnings",
                            "ignore:Grid size .* will likely result in GPU under-utilization")
    config.addinivalue_line("markers", "cupy_double: runs dualnn's GPU path on the CuPy double")


@pytest.fixture
def cpu_backend():
    """The CPU reference: NumPy with the reference math (no Numba JIT in this process)."""
    import dualnn as dn

    return dn.backend.NumpyBackend(fused=False)
