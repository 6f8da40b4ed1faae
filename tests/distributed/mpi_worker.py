"""Worker for the distributed tests: ``mpiexec -n 2 python -m mpi4py mpi_worker.py SCENARIO OUT``.

Scenarios:

``suite``     trains the shared problem on every rank and saves, per rank, into
              ``OUT/rank<r>.npz``: final parameters, optimizer state, shards, the merged
              batch-norm statistics, reduced metrics and a few communicator results.
``mismatch``  rank 1 builds its model in float32: ``check_consistent`` must fail.
``raise``     rank 1 raises while rank 0 waits in an all-reduce.
``timeout``   rank 1 sleeps while rank 0 waits in an all-reduce (timeout from the env).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import problem

import dualnn as dn
import dualnn.distributed as dist


def suite(out):
    dist.init()
    ctx = dist.current()
    r = ctx.rank
    saved = {}

    # Sharding, padded and dropped, of an uneven order.
    order = np.random.default_rng(5).permutation(11)
    saved["shard_pad"] = ctx.shard(order)
    saved["shard_drop"] = ctx.shard(order, drop_remainder=True)

    # Model: rank 1 starts from other weights and other optimizer state; broadcast fixes it.
    model = problem.model()
    opt = problem.optimizer(model)
    loss_fn = dn.losses.SoftmaxCrossEntropy()
    ctx.check_consistent(model)
    if r != 0:
        noise = np.random.default_rng(99)
        for p in model.parameters():
            p.data[...] += noise.standard_normal(p.shape)
        xs = noise.standard_normal((8, problem.FEATURES))
        problem.train_step(model, opt, loss_fn, xs, noise.integers(0, problem.CLASSES, 8))
        saved["state_before"] = np.concatenate(
            [p.state["momentum_buffer"].ravel() for p in model.parameters()])
    ctx.broadcast_model(model, opt)
    saved["state_entries"] = np.array([len(p.state) for p in model.parameters()])
    saved["rng_draw"] = model.backend.host_rng.random(3)

    dopt = dist.DistributedOptimizer(opt)
    X, y = problem.data()
    B = problem.BATCH_PER_RANK
    for order in problem.epoch_orders():
        mine = ctx.shard(order)
        for k in range(len(mine) // B):
            idx = mine[k * B:(k + 1) * B]
            problem.train_step(model, dopt, loss_fn, X[idx], y[idx])
    for name, p in model.named_parameters():
        saved[f"param.{name}"] = p.data
        saved[f"momentum.{name}"] = p.state["momentum_buffer"]
    saved["lr_through_wrapper"] = np.array(dopt.lr)
    dopt.lr = 0.05
    saved["lr_set_through_wrapper"] = np.array(opt.lr)

    # Batch-norm statistics merged over ranks.
    rows = problem.bn_rows(r)
    mean = rows.mean(axis=0)
    m2 = ((rows - mean) ** 2).sum(axis=0)
    count, merged_mean, merged_m2 = dist.sync_batchnorm_stats(len(rows), mean, m2)
    saved["bn_count"] = np.array(count)
    saved["bn_mean"] = merged_mean
    saved["bn_m2"] = merged_m2

    metrics = ctx.reduce_metrics({"loss": 1.0 + r, "accuracy": 2.0 * r})
    saved["metric_loss"] = np.array(metrics["loss"])
    saved["metric_accuracy"] = np.array(metrics["accuracy"])

    comm = dist.runtime.communicator("cpu")
    values = np.full(5, r + 1, dtype=np.float32)
    saved["allreduce_sum"] = comm.allreduce_(values.copy(), "sum")
    saved["allreduce_any_array"] = dist.allreduce_(np.arange(3.0) * (r + 1), "sum")
    saved["allreduce_max"] = comm.allreduce_(values.copy(), "max")
    saved["allgather"] = np.array(comm.allgather(("rank", r))[1 - r][1])
    saved["broadcast_object"] = np.array(comm.broadcast_object(r + 10, root=1))
    saved["size"] = np.array(dist.size())
    saved["init_again"] = np.array(dist.init())
    np.savez(os.path.join(out, f"rank{r}.npz"), **saved)


def mismatch(out):
    dist.init()
    dtype = "float32" if dist.rank() == 1 else "float64"
    dist.current().check_consistent(problem.model(dtype))
    print("check_consistent passed on mismatched models", flush=True)


def fail_on_rank_one(out):
    dist.init(timeout=60)
    ctx = dist.current()
    ctx.barrier()
    if ctx.rank == 1:
        raise ValueError("deliberate failure on purpose")
    dist.runtime.communicator("cpu").allreduce_(np.ones(4))
    print("rank 0 left the all-reduce", flush=True)


def timeout(out):
    dist.init()
    ctx = dist.current()
    ctx.barrier()
    if ctx.rank == 1:
        time.sleep(30)
    dist.runtime.communicator("cpu").allreduce_(np.ones(4))
    print(f"rank {ctx.rank} left the all-reduce", flush=True)


def gpu(out):
    import cupy

    dist.init()
    ctx = dist.current()
    r, n = ctx.rank, ctx.size
    comm = dist.runtime.communicator(dn.get_device())
    saved = {"communicator": np.array(comm.name), "device": np.array(dn.get_device())}
    a = cupy.full(5, r + 1, dtype=cupy.float32)
    comm.allreduce_(a, "sum")
    b = cupy.full(3, float(r), dtype=cupy.float64)
    comm.broadcast_(b, root=n - 1)
    saved["allreduce_sum"], saved["broadcast"] = a.get(), b.get()
    rows = problem.bn_rows(r)
    mean = rows.mean(axis=0)
    count, merged_mean, _ = dist.sync_batchnorm_stats(
        len(rows), cupy.asarray(mean), cupy.asarray(((rows - mean) ** 2).sum(axis=0)))
    saved["bn_count"], saved["bn_mean"] = np.array(count), merged_mean.get()
    model = problem.model()
    for p in model.parameters():
        p.grad[...] = r + 1
    ctx.allreduce_gradients(model.parameters())
    saved["grad"] = model.parameters()[0].backend.to_host(model.parameters()[0].grad)
    np.savez(os.path.join(out, f"rank{r}.npz"), **saved)


SCENARIOS = {"gpu": gpu, "suite": suite, "mismatch": mismatch, "raise": fail_on_rank_one,
             "timeout": timeout}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](sys.argv[2])
