"""Runs the CuPy-double tests (tests/cupy_double) in their own process.

dualnn's GPU path (CupyBackend, fit's GPU branches, set_device("gpu"), optimizers on
device arrays) runs on every machine there: ``cupy`` is a NumPy-backed double with real
CuPy 14 call signatures, and Numba's CUDA simulator runs the kernels. The simulator must
be switched on before Numba is first imported, so a subprocess gets a clean start. The
per-step sync/allocation budgets it measures are printed (``pytest -s``).
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
def test_cupy_double_suite_passes():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", DUALNN_CUPY_DOUBLE="1")
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/cupy_double", "-q", "-s", "-rxX",
         "-p", "no:cacheprovider"],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"CuPy-double suite failed:\n{output}"
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) > 0, f"no CuPy-double test ran:\n{output}"
    assert "skipped" not in output.splitlines()[-1], f"CuPy-double tests were skipped:\n{output}"
    budgets = sorted(set(re.findall(r"^.*(BUDGET .*)$", output, re.MULTILINE)))
    assert any("BUDGET explicit " in line for line in budgets), output
    assert any("BUDGET fit " in line for line in budgets), output
    print("\n".join(budgets))
