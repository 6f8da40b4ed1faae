"""Worker for the ``dn.fit`` tests: ``mpiexec -n N python -m mpi4py fit_worker.py SCENARIO OUT``.

Scenarios (files are written into OUT, which is also the working directory):

``fit``       a validation error on rank 1 only, then fewer rows on rank 1 (every rank
              records what it caught); then
              fit with shuffle=False and shuffle=True (validation data, a checkpoint and a
              CSV log, named by rank), evaluate and predict; then 1 epoch saved to ``after1.npz``, and a
              resume from ``single1.npz`` (written by one process before the job).
              Per rank: ``fit-rank<r>.npz``.
``callback``  a callback raises on rank 1 at the end of epoch 1.
``interrupt`` rank 1 gets a Ctrl-C (SIGINT) at the start of epoch 2, batch 128 per rank.
``kill``      rank 1 kills itself (SIGKILL) at the start of epoch 3; rank 0 saves a
              checkpoint after every epoch.
"""

from __future__ import annotations

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import problem

import dualnn as dn
import dualnn.distributed as dist

BATCH_PER_RANK = problem.BATCH_PER_RANK


def validation():
    rng = np.random.default_rng(11)
    return rng.standard_normal((301, problem.FEATURES)), rng.integers(0, problem.CLASSES, 301)


def train(model, opt, epochs, batch_size, shuffle=True, callbacks=(), X=None, y=None):
    X0, y0 = problem.data()
    return dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, X0 if X is None else X,
                  y0 if y is None else y, epochs=epochs, batch_size=batch_size,
                  shuffle=shuffle, validation_data=validation(), callbacks=callbacks,
                  progress=False)


def params(model, prefix, saved):
    for name, p in model.named_parameters():
        saved[f"{prefix}.{name}"] = np.array(p.data)


def fit(out):
    dist.init(timeout=60)
    r = dist.rank()
    saved = {}
    X, y = problem.data()

    bad = y.copy()
    if r == 1:
        bad[3] = problem.CLASSES + 4
    model = problem.model()
    try:
        train(model, problem.optimizer(model), 1, BATCH_PER_RANK, y=bad)
    except Exception as exc:
        saved["validation_error"] = np.array(f"{type(exc).__name__}: {exc}")

    model = problem.model()
    try:
        rows = len(X) - 8 * r
        train(model, problem.optimizer(model), 1, BATCH_PER_RANK, X=X[:rows], y=y[:rows])
    except Exception as exc:
        saved["plan_error"] = np.array(f"{type(exc).__name__}: {exc}")

    model = problem.model()  # 1023 rows: shards of 512 and 511 rows, padded to 512 each
    history = train(model, problem.optimizer(model), 2, 100, X=X[:1023], y=y[:1023])
    params(model, "uneven", saved)
    saved["uneven_steps"] = np.array(model.epochs_trained)
    saved["uneven_loss"] = np.array(history["loss"])

    for shuffle in (False, True):
        model = problem.model()
        # Named per rank so that the test sees which ranks wrote: only rank 0 may.
        callbacks = [dn.callbacks.ModelCheckpoint(f"ckpt-rank{r}-{shuffle}.npz"),
                     dn.callbacks.CSVLogger(f"log-rank{r}-{shuffle}.csv")]
        history = train(model, problem.optimizer(model), problem.EPOCHS, BATCH_PER_RANK,
                        shuffle, callbacks)
        params(model, f"shuffle{shuffle}", saved)
        for key in history.history:
            saved[f"history{shuffle}.{key}"] = np.array(history[key])
    loss_fn = dn.losses.SoftmaxCrossEntropy()
    Xv, yv = validation()
    scores = dn.evaluate(model, loss_fn, Xv, yv)
    saved["evaluate"] = np.array([scores["loss"], scores["accuracy"]])
    saved["predict"] = dn.predict(model, Xv)

    model = problem.model()
    train(model, problem.optimizer(model), 1, BATCH_PER_RANK, True,
          [dn.callbacks.ModelCheckpoint("after1.npz")])

    model = problem.model()
    opt = problem.optimizer(model)
    dn.load("single1.npz", model, opt)
    train(model, opt, 1, BATCH_PER_RANK, True)
    params(model, "resumed", saved)
    np.savez(os.path.join(out, f"fit-rank{r}.npz"), **saved)


class _Raise(dn.callbacks.Callback):
    def on_epoch_end(self, run, epoch, logs):
        if dist.rank() == 1:
            raise ValueError("deliberate callback failure")


def callback(out):
    dist.init(timeout=60)
    model = problem.model()
    train(model, problem.optimizer(model), 5, BATCH_PER_RANK, callbacks=[_Raise()])
    print(f"rank {dist.rank()} finished fit", flush=True)


class _Kill(dn.callbacks.Callback):
    def on_epoch_begin(self, run, epoch):
        if epoch == 3 and dist.rank() == 1:
            os.kill(os.getpid(), signal.SIGKILL)


def kill(out):
    dist.init(timeout=60)
    print(f"rank {dist.rank()} pid {os.getpid()}", flush=True)
    model = problem.model()
    train(model, problem.optimizer(model), 50, BATCH_PER_RANK,
          callbacks=[dn.callbacks.ModelCheckpoint("last.npz"), _Kill()])
    print(f"rank {dist.rank()} finished fit", flush=True)


class _CtrlC(dn.callbacks.Callback):
    def on_epoch_begin(self, run, epoch):
        if epoch == 2 and dist.rank() == 1:
            os.kill(os.getpid(), signal.SIGINT)


def interrupt(out):
    dist.init(timeout=60)
    r = dist.rank()
    model = problem.model()
    history = train(model, problem.optimizer(model), 5, 128,
                    callbacks=[dn.callbacks.ModelCheckpoint("every.npz"), _CtrlC()])
    saved = {"stopped": np.array([history.stopped["epoch"], history.stopped["step"]]),
             "epochs_trained": np.array(model.epochs_trained)}
    params(model, "interrupted", saved)
    np.savez(os.path.join(out, f"interrupt-rank{r}.npz"), **saved)


SCENARIOS = {"fit": fit, "callback": callback, "kill": kill, "interrupt": interrupt}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]](sys.argv[2])
