"""Kernel tests: CPU cases run here; ``cudasim`` cases only with NUMBA_ENABLE_CUDASIM=1.

The simulator must be switched on before Numba is first imported, so those cases run in
their own process (``tests/test_cudasim_suite.py`` re-invokes pytest on this folder with
the variable set and ``-m cudasim``)::

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/kernels -m cudasim -q
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .cases import SIMULATOR

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    if SIMULATOR:
        return
    skip = pytest.mark.skip(reason="needs NUMBA_ENABLE_CUDASIM=1 in its own process "
                                   "(tests/test_cudasim_suite.py runs it)")
    for item in items:
        # this hook sees every collected item: only the cases of this folder are ours
        if (item.get_closest_marker("cudasim") is not None
                and _HERE in Path(str(item.fspath)).resolve().parents):
            item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "cudasim: runs under Numba's CUDA simulator")
    if SIMULATOR:
        # Later entries take precedence: NumbaPerformanceWarning is an error (e.g. an
        # implicit host<->device copy), except the notice of tiny test grids.
        config.addinivalue_line("filterwarnings",
                                "error::numba.core.errors.NumbaPerformanceWarning")
        config.addinivalue_line("filterwarnings",
                                "ignore:Grid size .* will likely result in GPU under-utilization")


@pytest.fixture
def ck():
    """The kernels.cuda module, with its launch geometry restored after the test."""
    from dualnn.kernels import cuda as ck

    saved = dict(vars(ck.config))
    yield ck
    for key, value in saved.items():
        setattr(ck.config, key, value)


@pytest.fixture
def tiny_grid(ck):
    """Few, small blocks, so every grid-stride loop runs several iterations per thread."""
    ck.config.block = 4
    ck.config.max_blocks = 2
    ck.config.bn_block_features = 2
    ck.config.bn_block_slices = 2
    ck.config.bn_rows_per_slice = 3
    ck.config.reduce_block = 4
    return ck


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
