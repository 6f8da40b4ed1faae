"""Shared fixtures: every layer test runs on each backend that can run here."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache",
                                                      "numba"))

import dualnn as dn  # noqa: E402
from dualnn.device import _reset_for_tests  # noqa: E402

try:
    from hypothesis import settings

    settings.register_profile("dualnn", deadline=None, max_examples=40, derandomize=True)
    settings.load_profile("dualnn")
except ImportError:  # pragma: no cover
    pass


def _strict_backend():
    xp = pytest.importorskip("array_api_strict")
    return dn.backend.ArrayAPIBackend(xp, name="array_api_strict")


BACKENDS = {
    "numpy-fused": lambda: dn.backend.NumpyBackend(fused=True),
    "numpy-unfused": lambda: dn.backend.NumpyBackend(fused=False),
    "array_api_strict": _strict_backend,
}


@pytest.fixture(params=list(BACKENDS))
def backend(request):
    """Each backend in turn, in force (``dn.use_backend``) for the test's duration."""
    b = BACKENDS[request.param]()
    b.seed(0)
    with dn.use_backend(b):
        yield b


@pytest.fixture(autouse=True)
def _fresh_device_state(monkeypatch):
    """Every test starts with no process default device and no cached backends."""
    monkeypatch.delenv("DUALNN_DEVICE", raising=False)
    _reset_for_tests()
    yield
    _reset_for_tests()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def to_host(backend, a):
    return np.asarray(backend.to_host(a))


# The CUDA-simulator suite must run in its own process (NUMBA_ENABLE_CUDASIM is read when
# numba is first imported); tests/test_cudasim_suite.py starts that process.
if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    collect_ignore_glob = ["cudasim/*"]
