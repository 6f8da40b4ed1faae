"""``dn.fit`` on two ranks under mpiexec: equivalence with one process of twice the batch,
identical replicas, rank-0-only files, errors on one rank, resume on any number of ranks."""

from __future__ import annotations

import os

import numpy as np
import pytest

import dualnn as dn
from dualnn.distributed import launch

from . import fit_worker as fw
from . import problem
from .conftest import needs_mpi

pytestmark = needs_mpi

WORKER = os.path.abspath(fw.__file__)
ENV = {"DUALNN_FUSED": "0", "DUALNN_DEVICE": "cpu", "CI": "1", "OMP_NUM_THREADS": "1",
       "OPENBLAS_NUM_THREADS": "1"}
GLOBAL_BATCH = 2 * fw.BATCH_PER_RANK


def run_job(name, out, n=2, timeout=60.0):
    return launch.run([WORKER, name, str(out)], n=n, timeout=timeout, env=ENV, cwd=str(out))


def reference(shuffle, epochs=problem.EPOCHS):
    """One process, batch 2 x 256, the same model, data and seed."""
    model = problem.model()
    opt = problem.optimizer(model)
    history = fw.train(model, opt, epochs, GLOBAL_BATCH, shuffle)
    return model, opt, history


def params_of(model):
    return {name: np.array(p.data) for name, p in model.named_parameters()}


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    model, opt, _ = reference(True, epochs=1)
    dn.save(str(out / "single1.npz"), model, opt)
    result = run_job("fit", out)
    assert result.returncode == 0 and not result.timed_out, result.stderr[-4000:]
    ranks = [dict(np.load(out / f"fit-rank{r}.npz")) for r in range(2)]
    return out, ranks


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_ranks_of_256_fit_like_one_process_of_512(job, shuffle):
    _, ranks = job
    model, _, history = reference(shuffle)
    for name, value in params_of(model).items():
        for r in range(2):
            np.testing.assert_allclose(ranks[r][f"shuffle{shuffle}.{name}"], value,
                                       rtol=1e-6, atol=1e-6)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(ranks[0][f"history{shuffle}.{key}"], history[key],
                                   rtol=1e-6, atol=1e-9, err_msg=key)


def test_parameters_are_bitwise_identical_across_ranks_after_fit(job):
    _, ranks = job
    keys = [k for k in ranks[0] if k.startswith(("shuffle", "resumed", "uneven."))]
    assert len(keys) == 4 * 4
    for key in keys:
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)


def test_an_uneven_last_shard_trains_without_a_hang(job):
    _, ranks = job
    for r in range(2):
        assert int(ranks[r]["uneven_steps"]) == 2
        assert np.all(np.isfinite(ranks[r]["uneven_loss"]))
    np.testing.assert_array_equal(ranks[0]["uneven_loss"], ranks[1]["uneven_loss"])


def test_only_rank_zero_writes_checkpoints_and_logs(job):
    out, _ = job
    for shuffle in (False, True):
        assert (out / f"ckpt-rank0-{shuffle}.npz").exists()
        assert (out / f"log-rank0-{shuffle}.csv").exists()
        assert not (out / f"ckpt-rank1-{shuffle}.npz").exists()
        assert not (out / f"log-rank1-{shuffle}.csv").exists()
    rows = (out / "log-rank0-True.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + problem.EPOCHS
    assert sorted(p.name for p in out.glob("*.tmp*")) == []


def test_a_validation_error_on_one_rank_is_raised_on_every_rank(job):
    _, ranks = job
    assert str(ranks[1]["validation_error"]).startswith("LabelError: fit: y: class labels")
    assert str(ranks[0]["validation_error"]).startswith(
        "RankFailedError: fit failed on rank 1 of 2 before training started: LabelError")


def test_ranks_given_different_data_all_raise_naming_the_difference(job):
    _, ranks = job
    for r in range(2):
        assert str(ranks[r]["plan_error"]) == (
            "RankMismatchError: fit: the number of training rows is 1016 on rank 1 but 1024 "
            "on rank 0. Every rank must call fit with the same data (the whole data set: fit "
            "shards it), batch size, epochs and model state")


def test_evaluate_and_predict_compute_the_full_data_on_every_rank(job):
    _, ranks = job
    model, _, _ = reference(True)
    Xv, yv = fw.validation()
    scores = dn.evaluate(model, dn.losses.SoftmaxCrossEntropy(), Xv, yv)
    for r in range(2):
        np.testing.assert_allclose(ranks[r]["evaluate"], [scores["loss"], scores["accuracy"]],
                                   rtol=1e-6)
        np.testing.assert_allclose(ranks[r]["predict"], dn.predict(model, Xv), rtol=1e-6,
                                   atol=1e-9)


def test_saved_on_two_ranks_resumes_on_one(job):
    out, _ = job
    model = problem.model()
    opt = problem.optimizer(model)
    checkpoint = dn.load(str(out / "after1.npz"), model, opt)
    assert checkpoint.epoch == 1
    fw.train(model, opt, 1, GLOBAL_BATCH, True)
    expected, _, _ = reference(True)
    for name, value in params_of(expected).items():
        np.testing.assert_allclose(params_of(model)[name], value, rtol=1e-6, atol=1e-6)


def test_saved_on_one_process_resumes_on_two_ranks(job):
    _, ranks = job
    expected, _, _ = reference(True)
    for name, value in params_of(expected).items():
        np.testing.assert_allclose(ranks[0][f"resumed.{name}"], value, rtol=1e-6, atol=1e-6)


def test_a_rank_raising_in_a_callback_ends_the_job_fast_naming_it(tmp_path):
    result = run_job("callback", tmp_path)
    assert result.returncode != 0 and not result.timed_out
    assert "rank 1 of 2 failed: ValueError: deliberate callback failure" in result.stderr
    assert "finished fit" not in result.stdout
    assert result.elapsed < 30, result.elapsed


def test_ctrl_c_seen_by_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    result = run_job("interrupt", tmp_path)
    assert result.returncode == 0 and not result.timed_out, result.stderr[-3000:]
    ranks = [dict(np.load(tmp_path / f"interrupt-rank{r}.npz")) for r in range(2)]
    for r in range(2):
        # the vote goes with the next step's all-reduce: step 2 of epoch 2
        np.testing.assert_array_equal(ranks[r]["stopped"], [2, 2])
        assert int(ranks[r]["epochs_trained"]) == 1
    for key in (k for k in ranks[0] if k.startswith("interrupted.")):
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key])
    model = problem.model()
    dn.load(str(tmp_path / "interrupted.npz"), model)
    np.testing.assert_array_equal(model.parameters()[0].data, ranks[0]["interrupted.0.weight"])


def test_a_rank_killed_during_fit_ends_the_job_and_the_last_checkpoint_loads(tmp_path):
    result = run_job("kill", tmp_path)
    assert result.returncode != 0 and not result.timed_out, result.stderr[-2000:]
    assert "finished fit" not in result.stdout
    assert result.elapsed < 30, result.elapsed
    assert result.dead_ranks == (1,)
    assert "rank 1 of 2 (pid" in result.stderr
    # rank 0 may be stopped while writing epoch 2's checkpoint: epoch 1's is then intact
    model = problem.model()
    checkpoint = dn.load(str(tmp_path / "last.npz"), model)
    assert checkpoint.epoch in (1, 2)
    assert dn.evaluate(model, dn.losses.SoftmaxCrossEntropy(), *fw.validation())["loss"] > 0
