"""The real NCCL communicator on GPUs (skipped without a GPU and NCCL)."""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
from dualnn.distributed.nccl import nccl_available

from . import problem
from .conftest import needs_mpi, run_scenario

pytestmark = [pytest.mark.gpu, needs_mpi]


def _gpu_count():
    return len(dn.available_devices()) - 1


@pytest.mark.skipif(_gpu_count() < 1 or not nccl_available(),
                    reason="needs a CUDA GPU, CuPy and the NCCL library")
def test_nccl_collectives_on_gpus(tmp_path):
    n = min(2, _gpu_count())
    job = run_scenario("gpu", tmp_path, env={"DUALNN_DEVICE": "auto"}, n=n)
    assert job.returncode == 0 and not job.timed_out, job.stderr[-4000:]
    rows = np.concatenate([problem.bn_rows(r) for r in range(n)])
    for r in range(n):
        got = dict(np.load(tmp_path / f"rank{r}.npz"))
        assert str(got["communicator"]) == "nccl"
        assert str(got["device"]) == f"gpu:{r}"
        np.testing.assert_array_equal(got["allreduce_sum"], np.full(5, n * (n + 1) / 2))
        np.testing.assert_array_equal(got["broadcast"], np.full(3, float(n - 1)))
        assert float(got["bn_count"]) == len(rows)
        np.testing.assert_allclose(got["bn_mean"], rows.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(got["grad"], (n + 1) / 2)
