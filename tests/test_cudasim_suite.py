"""Runs the CUDA-simulator cases of tests/kernels (marker ``cudasim``) in their own process.

The simulator must be switched on (``NUMBA_ENABLE_CUDASIM=1``) before Numba is first
imported, which this process has already done without it; a subprocess gets a clean start.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.cudasim
def test_cuda_simulator_suite_passes():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/kernels", "-m", "cudasim", "-q", "-p",
         "no:cacheprovider"],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"simulator suite failed:\n{output}"
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) > 0, f"no simulator test ran:\n{output}"
    assert "skipped" not in output.splitlines()[-1], f"simulator tests were skipped:\n{output}"
