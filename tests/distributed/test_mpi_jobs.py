"""Two-rank jobs under mpiexec: equivalence, identical replicas, batch-norm merge,
sharding, and how failures end a job."""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn

from . import problem
from .conftest import needs_mpi, run_scenario

pytestmark = needs_mpi


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    job = run_scenario("suite", out)
    assert job.returncode == 0 and not job.timed_out, job.stderr[-4000:]
    ranks = [dict(np.load(out / f"rank{r}.npz")) for r in range(2)]
    return ranks


def single_process_reference():
    """The shared problem trained by one process with batch 2 x 256 = 512."""
    model = problem.model()
    opt = problem.optimizer(model)
    loss_fn = dn.losses.SoftmaxCrossEntropy()
    X, y = problem.data()
    B = 2 * problem.BATCH_PER_RANK
    for order in problem.epoch_orders():
        for k in range(len(order) // B):
            idx = order[k * B:(k + 1) * B]
            problem.train_step(model, opt, loss_fn, X[idx], y[idx])
    return model


def test_two_ranks_of_256_train_like_one_process_of_512(suite):
    reference = single_process_reference()
    start = problem.model()
    for name, p in reference.named_parameters():
        got = suite[0][f"param.{name}"]
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, p.data, rtol=1e-6, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(suite[0][f"momentum.{name}"], p.state["momentum_buffer"],
                                   rtol=1e-6, atol=1e-9, err_msg=name)
    moved = sum(float(np.abs(p.data - q.data).max())
                for p, q in zip(reference.parameters(), start.parameters()))
    assert moved > 1e-3  # the comparison is not between two untrained models


def test_parameters_are_bitwise_identical_across_ranks(suite):
    keys = [k for k in suite[0] if k.startswith(("param.", "momentum."))]
    assert len(keys) == 8
    for key in keys:
        assert suite[0][key].tobytes() == suite[1][key].tobytes(), key


def test_broadcast_model_replaces_rank_one_weights_state_and_rng(suite):
    assert np.abs(suite[1]["state_before"]).max() > 0  # rank 1 had momentum of its own
    np.testing.assert_array_equal(suite[1]["state_entries"], [0, 0, 0, 0])  # rank 0's: none
    np.testing.assert_array_equal(suite[0]["rng_draw"], suite[1]["rng_draw"])


def test_sync_batchnorm_stats_equal_full_batch_stats(suite):
    rows = np.concatenate([problem.bn_rows(0), problem.bn_rows(1)])
    mean = rows.mean(axis=0)
    for r in range(2):
        assert float(suite[r]["bn_count"]) == len(rows)
        np.testing.assert_allclose(suite[r]["bn_mean"], mean, rtol=1e-13)
        np.testing.assert_allclose(suite[r]["bn_m2"], ((rows - mean) ** 2).sum(axis=0),
                                   rtol=1e-9)
        np.testing.assert_allclose(suite[r]["bn_m2"] / len(rows), rows.var(axis=0), rtol=1e-9)


def test_shards_of_an_uneven_epoch(suite):
    order = np.random.default_rng(5).permutation(11)
    pad = [suite[r]["shard_pad"] for r in range(2)]
    drop = [suite[r]["shard_drop"] for r in range(2)]
    assert [len(s) for s in pad] == [6, 6]           # same number of steps everywhere
    assert set(np.concatenate(pad)) == set(range(11))  # covering
    assert len(np.concatenate(pad)) - 11 == 1          # one sample repeated, no more
    assert [len(s) for s in drop] == [5, 5]
    assert not set(drop[0]) & set(drop[1])             # disjoint
    assert set(np.concatenate(drop)) == set(order[:10].tolist())


def test_metrics_and_host_collectives(suite):
    for r in range(2):
        assert float(suite[r]["metric_loss"]) == 1.5
        assert float(suite[r]["metric_accuracy"]) == 1.0
        np.testing.assert_array_equal(suite[r]["allreduce_sum"], np.full(5, 3.0))
        np.testing.assert_array_equal(suite[r]["allreduce_max"], np.full(5, 2.0))
        np.testing.assert_array_equal(suite[r]["allreduce_any_array"], np.arange(3.0) * 3)
        assert int(suite[r]["allgather"]) == 1 - r
        assert int(suite[r]["broadcast_object"]) == 11
        assert int(suite[r]["size"]) == 2
        assert float(suite[r]["lr_through_wrapper"]) == problem.LR
        assert float(suite[r]["lr_set_through_wrapper"]) == 0.05
    np.testing.assert_array_equal(suite[0]["init_again"], [0, 2, 0])
    np.testing.assert_array_equal(suite[1]["init_again"], [1, 2, 1])


def test_models_that_differ_across_ranks_end_the_job_naming_the_rank(tmp_path):
    job = run_scenario("mismatch", tmp_path)
    assert job.returncode != 0 and not job.timed_out
    assert "passed on mismatched" not in job.stdout
    assert "RankMismatchError: rank 1's model differs from rank 0's: parameter '0.weight' " \
           "is float32 (32, 20) on rank 1 but float64" in job.stderr


def test_an_exception_on_one_rank_ends_the_job_fast_naming_it(tmp_path):
    # Rank 0 waits in an all-reduce with a 60 s timeout: only the abort can end it sooner.
    job = run_scenario("raise", tmp_path)
    assert job.returncode != 0 and not job.timed_out
    assert "rank 1 of 2 failed: ValueError: deliberate failure on purpose" in job.stderr
    assert "rank 0 left the all-reduce" not in job.stdout
    assert job.elapsed < 30, job.elapsed


def test_a_stuck_collective_times_out(tmp_path):
    # Rank 1 sleeps 30 s; rank 0's all-reduce gives up after 1 s and aborts both.
    job = run_scenario("timeout", tmp_path, env={"DUALNN_COLLECTIVE_TIMEOUT": "1"})
    assert job.returncode != 0 and not job.timed_out
    assert "rank 0 of 2 failed: CollectiveTimeoutError: rank 0 of 2: allreduce of 4 " \
           "float64 values waited longer than the collective timeout of 1 s" in job.stderr
    assert "left the all-reduce" not in job.stdout
    assert job.elapsed < 25, job.elapsed
