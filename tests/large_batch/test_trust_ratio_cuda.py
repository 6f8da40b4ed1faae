"""The CUDA kernels of kernels/trust_ratio: PTX for sm_80/sm_90, and the simulator suite."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from dualnn.kernels.trust_ratio import cuda as k

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


@pytest.mark.skipif(SIMULATOR, reason="compile_ptx needs the real CUDA target")
@pytest.mark.parametrize("cc", [(8, 0), (9, 0)], ids=["sm80", "sm90"])
@pytest.mark.parametrize("dtype", k.FLOAT_DTYPES)
@pytest.mark.parametrize("name", sorted(k.SIGNATURES))
def test_kernel_compiles_to_ptx(name, dtype, cc):
    cuda = pytest.importorskip("numba.cuda")
    try:
        ptx, _ = cuda.compile_ptx(k.python_kernel(name, dtype), k.signature(name, dtype),
                                  cc=cc)
    except Exception as exc:
        if "NVRTC" in str(exc) or "nvrtc" in str(exc):
            pytest.skip(f"numba-cuda cannot compile PTX here: {exc}")
        raise
    assert f".target sm_{cc[0]}{cc[1]}" in ptx
    assert ".entry" in ptx
    if dtype == "float32":  # no literal promotes float32 arithmetic to float64
        assert ".f64" not in ptx


@pytest.mark.cudasim
@pytest.mark.skipif(SIMULATOR, reason="already inside the simulator")
def test_simulator_suite_passes():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(HERE / "sim_trust_ratio.py"), "-q",
         "-p", "no:cacheprovider"],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"simulator tests failed:\n{output}"
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) >= 70, f"too few simulator tests ran:\n{output}"
    assert "skipped" not in output.splitlines()[-1], f"simulator tests skipped:\n{output}"
