"""The parts of dualnn.distributed that need no second process."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

import dualnn as dn
import dualnn.distributed as dist
from dualnn.distributed import _mpi, context
from dualnn.distributed.errors import DatasetTooSmallError, MPIUnavailableError, NotInitializedError
from dualnn.errors import ConfigurationError, DualnnError


@pytest.mark.parametrize("n,size", [(12, 3), (13, 3), (14, 4), (5, 5), (100, 7)])
def test_shards_cover_every_sample_with_equal_lengths(n, size):
    order = np.random.default_rng(n).permutation(n)
    pad = [dist.shard_indices(order, r, size) for r in range(size)]
    drop = [dist.shard_indices(order, r, size, drop_remainder=True) for r in range(size)]
    assert len({len(s) for s in pad}) == 1 and len(pad[0]) == -(-n // size)
    assert set(np.concatenate(pad).tolist()) == set(range(n))
    assert len({len(s) for s in drop}) == 1 and len(drop[0]) == n // size
    flat = np.concatenate(drop)
    assert len(set(flat.tolist())) == len(flat) == n - n % size  # disjoint


def test_strided_shards_keep_global_batches():
    order = np.random.default_rng(0).permutation(48)
    shards = [dist.shard_indices(order, r, 3) for r in range(3)]
    for k in range(4):  # per-rank batch 4 -> global batch 12
        together = np.concatenate([s[k * 4:(k + 1) * 4] for s in shards])
        assert sorted(together) == sorted(order[k * 12:(k + 1) * 12])


def test_too_few_samples_for_the_ranks():
    with pytest.raises(DatasetTooSmallError, match="3 sample.* 4 ranks"):
        dist.shard_indices(np.arange(3), 0, 4)
    assert issubclass(DatasetTooSmallError, DualnnError)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_chan_merge_equals_full_batch_statistics(dtype):
    rng = np.random.default_rng(1)
    parts = [rng.normal(500.0, 0.5, size=(k, 4)).astype(dtype) for k in (5, 0, 17, 2)]
    counts = [len(p) for p in parts]
    means = [p.mean(axis=0) if len(p) else np.zeros(4, dtype) for p in parts]
    m2s = [((p - m) ** 2).sum(axis=0) for p, m in zip(parts, means)]
    n, mean, m2 = dist.merge_moments(counts, means, m2s)
    rows = np.concatenate(parts).astype(np.float64)
    tol = 1e-12 if dtype == np.float64 else 2e-4
    assert n == len(rows)
    np.testing.assert_allclose(mean, rows.mean(axis=0), rtol=tol)
    np.testing.assert_allclose(m2 / n, rows.var(axis=0), rtol=tol * 10)


def test_timeout_settings(monkeypatch):
    monkeypatch.delenv("DUALNN_COLLECTIVE_TIMEOUT", raising=False)
    assert dist.resolve_timeout() == 600.0
    monkeypatch.setenv("DUALNN_COLLECTIVE_TIMEOUT", "2.5")
    assert dist.resolve_timeout() == 2.5
    assert dist.resolve_timeout(7) == 7.0
    assert dist.resolve_timeout("off") is None and dist.resolve_timeout(0) is None
    monkeypatch.setenv("DUALNN_COLLECTIVE_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError, match="DUALNN_COLLECTIVE_TIMEOUT.*'soon'"):
        dist.resolve_timeout()


def test_missing_mpi4py_says_what_to_install(monkeypatch):
    monkeypatch.setattr(_mpi, "mpi4py_available", lambda: False)
    monkeypatch.delitem(sys.modules, "mpi4py.MPI", raising=False)
    with pytest.raises(MPIUnavailableError, match=r'pip install -e "\.\[mpi\]"'):
        _mpi.import_mpi()
    with pytest.raises(MPIUnavailableError, match="mpi4py"):
        dist.MPICommunicator()
    assert isinstance(MPIUnavailableError("x"), ImportError)


def test_before_init_a_process_is_a_job_of_one():
    assert not dist.is_initialized() and dist.current() is None
    assert (dist.rank(), dist.size(), dist.local_rank()) == (0, 1, 0)
    mean, m2 = np.ones(3), np.zeros(3)
    assert dist.sync_batchnorm_stats(4, mean, m2) == (4, mean, m2)
    assert dist.allreduce_(mean) is mean
    opt = dn.optim.SGD(dn.layers.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(NotInitializedError, match=r"init\(\)"):
        dist.DistributedOptimizer(opt)


def test_model_signatures_name_the_first_difference():
    def sig(*layers):
        return context.TrainingContext.model_signature(dn.Sequential(*layers))

    a = sig(dn.layers.Linear(4, 8), dn.layers.ReLU(), dn.layers.Linear(8, 2))
    wider = sig(dn.layers.Linear(4, 9), dn.layers.ReLU(), dn.layers.Linear(9, 2))
    assert context.first_difference(a, wider, 3) == \
        "parameter '0.weight' is float32 (9, 4) on rank 3 but float32 (8, 4) on rank 0"
    other = sig(dn.layers.Linear(4, 8), dn.layers.Tanh(), dn.layers.Linear(8, 2))
    assert context.first_difference(a, other, 1) == \
        "layer '1' is Tanh on rank 1 but ReLU on rank 0"
    bn = sig(dn.layers.Linear(4, 8), dn.layers.ReLU(), dn.layers.Linear(8, 2),
             dn.layers.BatchNorm(2))
    assert context.first_difference(a, bn, 2) == "layer '3' (BatchNorm) exists only on rank 2"
    assert context.first_difference(bn, a, 2) == \
        "layer '3' (BatchNorm) exists on rank 0 but not on rank 2"
    assert context.first_difference(a, sig(dn.layers.Linear(4, 8)), 1).startswith("layer '1'")


def test_describe_reports_mpi_and_nccl():
    info = dist.describe()
    for key in ("mpi4py", "mpi_library", "mpi_standard", "mpiexec", "initialized", "rank",
                "size", "local_rank", "collective_timeout", "nccl"):
        assert key in info
    assert info["size"] == 1 and info["initialized"] is False
    assert info["nccl"].startswith(("available", "unavailable"))
    if _mpi.mpi4py_available():
        assert info["mpi4py"] is not None and info["mpi_library"]


@pytest.mark.parametrize("n,shuffle", [(40, True), (43, True), (43, False)])
def test_sharded_loaders_split_the_global_batches(n, shuffle):
    from dualnn.data import DataLoader
    from dualnn.distributed.data import ShardedLoader

    X = np.arange(n, dtype=np.float64)[:, None]
    y = np.arange(n)
    loaders = [ShardedLoader(DataLoader(X, y, batch_size=4, shuffle=shuffle,
                                        rng=np.random.default_rng(3)), r, 2)
               for r in range(2)]
    whole = DataLoader(X, y, batch_size=8, shuffle=shuffle, rng=np.random.default_rng(3))
    assert len(loaders[0]) == len(loaders[1]) == math.ceil(math.ceil(n / 2) / 4)
    epochs = [list(loader) for loader in loaders]
    seen = []
    for k, (xb, yb) in enumerate(whole):
        together = np.concatenate([epochs[0][k][1], epochs[1][k][1]])
        if k < n // 8:  # full global batches are exactly the single process's
            assert sorted(together) == sorted(yb)
        seen += together.tolist()
        np.testing.assert_array_equal(epochs[0][k][0][:, 0], epochs[0][k][1])
    assert set(seen) == set(range(n)) and len(seen) - n == n % 2
