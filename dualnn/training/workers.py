"""What :func:`~dualnn.fit` does differently once ``dn.distributed.init()`` has run.

Data parallelism (see the "Training on several workers" page): every rank holds the
whole model and trains on its shard of every epoch; :func:`setup` joins the ranks before
the first epoch, the optimizer step averages the gradients (one all-reduce of a flat
buffer per step, by :class:`~dualnn.distributed.DistributedOptimizer`), and
:func:`reduce_logs` turns the per-rank epoch logs into the job's logs.

Errors
------
- An error found while checking ``fit``'s arguments on one rank is raised on *every*
  rank (:func:`agree_on_errors`): the failing rank raises its own exception, the others
  a :class:`RankFailedError` naming that rank and its error. No rank is left waiting.
- An exception after the ranks have joined (a callback, a non-finite loss seen by one
  rank ...) cannot be raised on the others, which wait in the next collective: the rank
  prints it with its number and ends the job (``MPI_Abort``).

With one process, or before ``init``, none of this runs: :func:`context` is None.
"""

from __future__ import annotations

import contextvars
import functools
import sys

import numpy as np

from ..distributed.errors import DistributedError, RankMismatchError

__all__ = ["RankFailedError", "agree_on_errors", "context", "interrupt_pending", "reduce_logs",
           "setup"]


class RankFailedError(DistributedError, RuntimeError):
    """Another rank's ``fit`` failed before training; raised on the ranks that did not."""


def context():
    """The :class:`~dualnn.distributed.TrainingContext` when ``init`` has run and the job
    has more than one rank, else None."""
    if "dualnn.distributed.runtime" not in sys.modules:  # never initialised: stay cheap
        return None
    from .. import distributed

    ctx = distributed.current()
    return ctx if ctx is not None and ctx.size > 1 else None


class _Joined:
    """Per-call flag: set once this rank passed its checks (:func:`setup`)."""

    def __init__(self):
        self.done = False


_joined = contextvars.ContextVar("dualnn_fit_joined", default=None)


def agree_on_errors(fit):
    """Decorate ``fit`` so that its argument errors end every rank alike.

    Every rank takes part in exactly one all-gather of its status: in :func:`setup`
    (after its own checks passed) or here (when they raised). Past that point an
    exception ends the job naming the rank (``MPI_Abort``), since the other ranks are
    waiting in a collective.
    """

    @functools.wraps(fit)
    def wrapper(*args, **kwargs):
        ctx = context()
        if ctx is None:
            return fit(*args, **kwargs)
        joined = _Joined()
        token = _joined.set(joined)
        try:
            return fit(*args, **kwargs)
        except (RankFailedError, RankMismatchError):  # every rank raises these alike
            raise
        except BaseException as exc:
            if not joined.done:
                _agree(ctx, exc)  # tells the others, then raises here
                raise
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            import traceback

            from ..distributed.communicator import report_and_abort
            from ..distributed.runtime import communicator

            traceback.print_exc()
            report_and_abort(communicator("cpu"), exc)
            raise
        finally:
            _joined.reset(token)

    return wrapper


def _agree(ctx, exc=None, plan=None):
    """All-gather every rank's status and training plan.

    Raises :class:`RankFailedError` on a rank that is fine when another is not (a
    failing rank raises its own error afterwards), and
    :class:`~dualnn.distributed.errors.RankMismatchError` on every rank when the plans
    (:func:`plan`) differ.
    """
    from ..distributed.errors import RankMismatchError
    from ..distributed.runtime import communicator

    mine = None if exc is None else f"{type(exc).__name__}: {exc}"
    everyone = communicator("cpu").allgather((mine, plan))
    failed = [(r, text) for r, (text, _) in enumerate(everyone) if text is not None]
    if failed:
        if exc is None:
            first, text = failed[0]
            raise RankFailedError(f"fit failed on rank {first} of {ctx.size} before "
                                  f"training started: {text}")
        return
    reference = everyone[0][1]
    for r, (_, theirs) in enumerate(everyone):
        for key, value in theirs.items():
            if value != reference[key]:
                raise RankMismatchError(
                    f"fit: {key} is {value} on rank {r} but {reference[key]} on rank 0. "
                    "Every rank must call fit with the same data (the whole data set: fit "
                    "shards it), batch size, epochs and model state")


def plan(loader, validation, epochs, model):
    """What must agree across ranks before training, as a dict of small values."""
    import hashlib

    def fingerprint(*arrays):
        digest = hashlib.sha256()
        for a in arrays:
            if a is not None and len(a):
                step = max(1, len(a) // 64)
                digest.update(np.ascontiguousarray(np.asarray(a[::step])).tobytes())
        return digest.hexdigest()[:16]

    return {"the number of training rows": int(loader.n),
            "batch_size": int(loader.batch_size),
            "shuffle": bool(loader.shuffle),
            "epochs": int(epochs),
            "model.epochs_trained": int(getattr(model, "epochs_trained", 0) or 0),
            "a sample of the training data (fingerprint)": fingerprint(loader.X, loader.y),
            "the number of validation rows": None if validation is None
            else len(validation[0])}


def setup(ctx, model, optimizer, loader, validation, epochs):
    """Join the ranks before the first epoch.

    Checks that the ranks agree (statuses, data, batch size, epochs, then the model's
    layers, shapes, dtypes),
    copies rank 0's parameters, buffers, optimizer state and host RNG to every rank
    (the RNG the loader shuffles with), shards the loader, wraps the optimizer and
    shards the validation rows.

    Parameters
    ----------
    ctx : TrainingContext
    model, optimizer, loader
    validation : (X_val (m, ...), y_val (m, ...)) or None
    epochs : int

    Returns
    -------
    optimizer : DistributedOptimizer
    loader : ShardedLoader
        Batches of ``loader.batch_size`` rows per rank; every rank gets the same number.
    validation : (X_shard, y_shard) or None
        This rank's contiguous share of the validation rows (all of them when there
        are fewer rows than ranks).
    """
    from .. import distributed

    joined = _joined.get()
    if joined is not None:
        joined.done = True  # past the checks: this rank takes part in the status all-gather
    _agree(ctx, plan=plan(loader, validation, epochs, model))
    ctx.reset_stop()
    ctx.check_consistent(model)
    ctx.broadcast_model(model, optimizer)
    loader = ctx.shard_loader(loader)
    if not isinstance(optimizer, distributed.DistributedOptimizer):
        optimizer = distributed.DistributedOptimizer(optimizer)
    if validation is not None and len(validation[0]) >= ctx.size:
        bounds = np.linspace(0, len(validation[0]), ctx.size + 1).astype(int)
        piece = slice(bounds[ctx.rank], bounds[ctx.rank + 1])
        validation = (validation[0][piece], validation[1][piece])
    return optimizer, loader, validation


def interrupt_pending(interrupt):
    """Whether :func:`~dualnn.fit` should stop now for a Ctrl-C (``interrupt`` is its
    :class:`~dualnn.training.interrupt.DeferredInterrupt`).

    With several ranks, ``mpiexec`` passes Ctrl-C to every rank, but they may see it at
    different steps; a rank that stopped alone would leave the others waiting. So a
    rank's pending Ctrl-C is a vote carried by the next gradient all-reduce, and every
    rank stops after the first step whose all-reduce carried a vote.
    """
    ctx = context()
    if ctx is None:
        return interrupt.pending
    ctx.stop_vote = bool(interrupt.pending)
    return ctx.stop_agreed()


def reduce_logs(ctx, logs, validation_rows):
    """The job's epoch logs from this rank's (one small all-reduce).

    ``loss`` and ``accuracy``: mean over ranks (every rank trained on as many rows);
    ``samples_per_sec``: sum; ``epoch_time``: max; ``val_*``: weighted by each rank's
    ``validation_rows``; ``lr`` and anything else: rank 0's (they agree).
    """
    weights = {"loss": 1.0 / ctx.size, "accuracy": 1.0 / ctx.size, "samples_per_sec": 1.0}
    summed = {k: float(v) * weights[k] for k, v in logs.items() if k in weights}
    val = {k: float(v) * validation_rows for k, v in logs.items() if k.startswith("val_")}
    if val:
        summed.update(val)
        summed["val_rows"] = float(validation_rows)
    reduced = ctx.reduce_metrics(summed, op="sum")
    rows = reduced.pop("val_rows", None)
    out = dict(logs)
    out.update(reduced)
    for k in val:
        out[k] = reduced[k] / rows
    if "epoch_time" in logs:
        out["epoch_time"] = ctx.reduce_metrics({"t": logs["epoch_time"]}, op="max")["t"]
    return out
