"""The small problem both the MPI workers and the single-process references train.

Imported by ``mpi_worker.py`` (under mpiexec) and by the tests (in pytest), so both
sides build exactly the same model, data and sample order.
"""

from __future__ import annotations

import numpy as np

import dualnn as dn

N_SAMPLES = 1024
FEATURES = 20
CLASSES = 5
BATCH_PER_RANK = 256
EPOCHS = 2
LR = 0.1
MOMENTUM = 0.9


def data():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((N_SAMPLES, FEATURES))
    y = rng.integers(0, CLASSES, N_SAMPLES)
    return X, y


def model(dtype="float64"):
    dn.seed(0)
    return dn.Sequential(dn.layers.Linear(FEATURES, 32, dtype=dtype), dn.layers.Tanh(),
                         dn.layers.Linear(32, CLASSES, dtype=dtype))


def optimizer(m):
    return dn.optim.SGD(m.parameters(), lr=LR, momentum=MOMENTUM)


def epoch_orders():
    """One permutation per epoch, the same on every rank."""
    rng = np.random.default_rng(123)
    return [rng.permutation(N_SAMPLES) for _ in range(EPOCHS)]


def train_step(m, opt, loss_fn, xb, yb):
    out = m.forward(xb, training=True)
    loss_fn.forward(out, yb)
    m.backward(loss_fn.backward())
    opt.step()
    opt.zero_grad()


def bn_rows(rank):
    """Rank ``rank``'s rows for the batch-norm merge: different counts, a large mean."""
    rng = np.random.default_rng(100 + rank)
    return rng.normal(loc=1000.0, scale=rank + 1.0, size=(37 + 13 * rank, 6))
