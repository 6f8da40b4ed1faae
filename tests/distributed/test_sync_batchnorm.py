"""Synchronized batch norm over 2 MPI ranks equals batch norm over the full batch."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

import dualnn as dn
from dualnn import layers as L
from dualnn.distributed import launch

from .conftest import needs_mpi

pytestmark = needs_mpi

ROWS, FEATURES = 12, 5  # 6 rows per rank

WORKER = textwrap.dedent(f"""
    import os, sys
    import numpy as np
    import dualnn as dn
    import dualnn.distributed
    from dualnn import layers as L

    out = sys.argv[1]
    dn.distributed.init()
    r = dn.distributed.rank()
    data = np.random.default_rng(7)
    x = data.standard_normal(({ROWS}, {FEATURES})) * 3 + 2
    dy = data.standard_normal(({ROWS}, {FEATURES}))
    rows = slice(r * {ROWS // 2}, (r + 1) * {ROWS // 2})
    saved = {{}}
    for relu in (False, True):
        bn = L.BatchNorm({FEATURES}, momentum=0.25, dtype="float64", sync=True)
        model = dn.Sequential(bn, L.ReLU()) if relu else bn
        b = bn.backend
        y = model.forward(b.asarray(x[rows]), training=True)
        dx = model.backward(b.asarray(dy[rows]))
        tag = "relu" if relu else "plain"
        saved[tag + "_y"] = b.to_host(y)
        saved[tag + "_dx"] = b.to_host(dx)
        saved[tag + "_dgamma"] = b.to_host(bn.gamma.grad)
        saved[tag + "_dbeta"] = b.to_host(bn.beta.grad)
        saved[tag + "_rm"] = b.to_host(bn.running_mean)
        saved[tag + "_rv"] = b.to_host(bn.running_var)
    np.savez(os.path.join(out, f"rank{{r}}.npz"), **saved)
""")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("syncbn")
    script = out / "worker.py"
    script.write_text(WORKER)
    job = launch.run([str(script), str(out)], n=2, timeout=60.0, cwd=str(out),
                     env={"DUALNN_FUSED": "0", "DUALNN_DEVICE": "cpu", "CI": "1",
                          "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    assert job.returncode == 0 and not job.timed_out, job.stderr[-4000:]
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(2)]


@pytest.mark.parametrize("relu", [False, True])
def test_two_ranks_equal_full_batch_forward_and_backward(ranks, relu):
    data = np.random.default_rng(7)
    x = data.standard_normal((ROWS, FEATURES)) * 3 + 2
    dy = data.standard_normal((ROWS, FEATURES))
    bn = L.BatchNorm(FEATURES, momentum=0.25, dtype="float64")
    model = dn.Sequential(bn, L.ReLU()) if relu else bn
    b = bn.backend
    y = b.to_host(model.forward(b.asarray(x), training=True))
    dx = b.to_host(model.backward(b.asarray(dy)))
    tag = "relu" if relu else "plain"
    np.testing.assert_allclose(np.concatenate([r[tag + "_y"] for r in ranks]), y,
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([r[tag + "_dx"] for r in ranks]), dx,
                               rtol=1e-9, atol=1e-12)
    # gamma/beta gradients: each rank holds its share; together the full batch's
    for name, full in (("_dgamma", bn.gamma.grad), ("_dbeta", bn.beta.grad)):
        np.testing.assert_allclose(ranks[0][tag + name] + ranks[1][tag + name],
                                   b.to_host(full), rtol=1e-10, atol=1e-12)
    for name, full in (("_rm", bn.running_mean), ("_rv", bn.running_var)):
        for r in ranks:
            np.testing.assert_allclose(r[tag + name], b.to_host(full), rtol=1e-10)
    # the ranks' own halves alone would give something else
    local = L.BatchNorm(FEATURES, dtype="float64")
    half = b.to_host(local.forward(b.asarray(x[:ROWS // 2]), training=True))
    assert np.max(np.abs(half - ranks[0]["plain_y"])) > 1e-3
