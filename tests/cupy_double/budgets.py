"""Measure host syncs and new device allocations per warmed-up GPU training step.

The contract: a steady-state GPU training step performs 0 host synchronizations and
allocates 0 new device arrays after the first step; opt-in features (gradient clipping,
non-finite checks, Hinge, evaluate) meet the same budget or document their one read.

Run it for a table (needs the simulator and the double, like the tests)::

    NUMBA_ENABLE_CUDASIM=1 python -m tests.cupy_double.budgets
"""

from __future__ import annotations

import dualnn as dn
from tests.cupy_double import double
from tests.cupy_double.helpers import BATCH, data, make_loss, mlp, to_device

WARMUP = 2
STEPS = 2


class Budget:
    """Per-step means of one scenario, with where the events came from."""

    def __init__(self, name, counts, steps):
        self.name = name
        self.sync = counts.sync / steps
        self.alloc = counts.alloc / steps
        self.h2d = counts.h2d / steps
        self.sync_sites = counts.where("sync")
        self.alloc_sites = counts.where("alloc")

    def line(self):
        return (f"BUDGET {self.name:<28} syncs/step={self.sync:<5g} allocs/step="
                f"{self.alloc:<5g} h2d/step={self.h2d:g}")

    def __repr__(self):
        return (self.line() + (f"\n  syncs: {self.sync_sites}" if self.sync else "")
                + (f"\n  allocs: {self.alloc_sites}" if self.alloc else ""))


def _gpu():
    return dn.device.backend_for("gpu")


def _optimizer(kind, params, **options):
    if kind == "adam":
        return dn.optim.Adam(params, lr=1e-3, **options)
    return dn.optim.SGD(params, lr=1e-2, momentum=0.9, **options)


def explicit_step(name="explicit", loss="softmax_cross_entropy", optimizer="adam",
                  check_labels=False, check_finite=False, options=None, **model_options):
    """Budget of ``forward, loss, backward, opt.step, zero_grad`` on device-resident data."""
    backend = _gpu()
    x, y = data(loss)
    with dn.use_backend(backend):
        dn.seed(0)
        model = mlp(**model_options)
        opt = _optimizer(optimizer, model.parameters(), **(options or {}))
        loss_fn = make_loss(loss)
        if hasattr(loss_fn, "check_labels"):
            loss_fn.check_labels = check_labels
        xd, yd = backend.asarray(x, "float64"), to_device(backend, y, "float64")

        def step():
            out = model.forward(xd, training=True)
            loss_fn.forward(out, yd)
            model.backward(loss_fn.backward())
            opt.step(check_finite=check_finite)
            opt.zero_grad()

        for _ in range(WARMUP):
            step()
        with double.counting() as counts:
            for _ in range(STEPS):
                step()
    return Budget(name, counts, STEPS)


def fit_step(name="fit", loss="softmax_cross_entropy", check_finite=None, **model_options):
    """Budget of one step inside ``fit``: the difference between epochs of 2 and 4 steps
    (per-epoch reads and the epoch's end cancel out)."""
    backend = _gpu()
    x, y = data(loss, n=4 * BATCH)
    with dn.use_backend(backend):
        dn.seed(0)
        model = mlp(**model_options)
        opt = _optimizer("adam", model.parameters())
        loss_fn = make_loss(loss)

        def run(rows):
            with double.counting() as counts:
                dn.fit(model, loss_fn, opt, x[:rows], y[:rows], epochs=1, batch_size=BATCH,
                       shuffle=False, progress=False, log_interval=1000,
                       check_finite=check_finite)
            return counts

        run(2 * BATCH)  # warm up
        short, long = run(2 * BATCH), run(4 * BATCH)
    diff = double.Counts()
    for kind in double.KINDS:
        setattr(diff, kind, getattr(long, kind) - getattr(short, kind))
        diff.sites[kind] = long.sites[kind] - short.sites[kind]
    return Budget(name, diff, 2)


def fit_mixed_float16_step(name="fit_mixed_float16", optimizer="adam"):
    """Budget of one ``fit(precision="mixed_float16")`` step with its :class:`LossScaler`
    (float32 master weights; the difference between epochs of 2 and 4 steps)."""
    backend = _gpu()
    x, y = data("softmax_cross_entropy", n=4 * BATCH)
    with dn.use_backend(backend):
        dn.seed(0)
        model = mlp("float32")
        opt = _optimizer(optimizer, model.parameters())
        loss_fn = make_loss("softmax_cross_entropy")
        scaler = dn.precision.LossScaler()

        def run(rows):
            with double.counting() as counts:
                dn.fit(model, loss_fn, opt, x[:rows], y[:rows], epochs=1, batch_size=BATCH,
                       shuffle=False, progress=False, log_interval=1000,
                       precision="mixed_float16", loss_scaler=scaler)
            return counts

        run(2 * BATCH)  # warm up
        short, long = run(2 * BATCH), run(4 * BATCH)
    diff = double.Counts()
    for kind in double.KINDS:
        setattr(diff, kind, getattr(long, kind) - getattr(short, kind))
        diff.sites[kind] = long.sites[kind] - short.sites[kind]
    return Budget(name, diff, 2)


def explicit_loss_scaler_step(name="explicit_loss_scaler", optimizer="adam", options=None):
    """Budget of an explicit step with a :class:`LossScaler`: scale (in place), backward,
    ``scaler.step``, ``scaler.update``, zero_grad."""
    backend = _gpu()
    x, y = data("softmax_cross_entropy")
    with dn.use_backend(backend):
        dn.seed(0)
        model = mlp("float32")
        opt = _optimizer(optimizer, model.parameters(), **(options or {}))
        loss_fn = make_loss("softmax_cross_entropy")
        scaler = dn.precision.LossScaler()
        xd, yd = backend.asarray(x, "float32"), to_device(backend, y, "float32")

        def step():
            out = model.forward(xd, training=True)
            loss_fn.forward(out, yd)
            dy = loss_fn.backward()
            model.backward(scaler.scale(dy, out=dy))
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()

        for _ in range(WARMUP):
            step()
        with double.counting() as counts:
            for _ in range(STEPS):
                step()
    return Budget(name, counts, STEPS)


def fit_epoch(name="fit_epoch"):
    """Budget of a whole warmed-up one-step epoch (its step plus the per-epoch reads)."""
    backend = _gpu()
    x, y = data("softmax_cross_entropy", n=BATCH)
    with dn.use_backend(backend):
        dn.seed(0)
        model = mlp()
        opt = _optimizer("adam", model.parameters())
        loss_fn = make_loss("softmax_cross_entropy")
        dn.fit(model, loss_fn, opt, x, y, epochs=1, batch_size=BATCH, progress=False)
        with double.counting() as counts:
            dn.fit(model, loss_fn, opt, x, y, epochs=1, batch_size=BATCH, progress=False)
    return Budget(name, counts, 1)


def evaluate_call(name="evaluate", batches=2):
    """Syncs and allocations of one ``evaluate`` call over ``batches`` batches."""
    backend = _gpu()
    x, y = data("softmax_cross_entropy", n=batches * BATCH)
    with dn.use_backend(backend):
        dn.seed(0)
        model = mlp()
        loss_fn = make_loss("softmax_cross_entropy")
        dn.evaluate(model, loss_fn, x, y, batch_size=BATCH)
        with double.counting() as counts:
            dn.evaluate(model, loss_fn, x, y, batch_size=BATCH)
    return Budget(name, counts, 1)


SCENARIOS = {
    "explicit": lambda: explicit_step(),
    "explicit_sgd_momentum": lambda: explicit_step("explicit_sgd_momentum", optimizer="sgd"),
    "explicit_mse": lambda: explicit_step("explicit_mse", loss="mse"),
    "explicit_bce": lambda: explicit_step("explicit_bce", loss="binary_cross_entropy"),
    "explicit_batchnorm": lambda: explicit_step("explicit_batchnorm", batchnorm=True),
    "explicit_dropout": lambda: explicit_step("explicit_dropout", dropout=0.2),
    "explicit_l1": lambda: explicit_step("explicit_l1", options={"l1": 1e-4}),
    "explicit_max_norm": lambda: explicit_step("explicit_max_norm", options={"max_norm": 2.0}),
    "explicit_label_check": lambda: explicit_step("explicit_label_check", check_labels=True),
    "hinge": lambda: explicit_step("hinge", loss="hinge"),
    "clip_grad_norm": lambda: explicit_step("clip_grad_norm",
                                            options={"clip_grad_norm": 1.0}),
    "check_finite": lambda: explicit_step("check_finite", check_finite=True),
    "fit": lambda: fit_step(),
    "fit_check_finite": lambda: fit_step("fit_check_finite", check_finite=True),
    "fit_epoch": lambda: fit_epoch(),
    "fit_mixed_float16": lambda: fit_mixed_float16_step(),
    "fit_mixed_float16_sgd": lambda: fit_mixed_float16_step("fit_mixed_float16_sgd", "sgd"),
    "explicit_loss_scaler": lambda: explicit_loss_scaler_step(),
    "explicit_loss_scaler_clip": lambda: explicit_loss_scaler_step(
        "explicit_loss_scaler_clip", options={"clip_grad_norm": 1.0}),
    "evaluate": lambda: evaluate_call(),
}
"""Scenario name -> measurement (each returns a :class:`Budget`)."""


def main():
    double.install()
    dn.device._reset_for_tests()
    for measure in SCENARIOS.values():
        print(repr(measure()))


if __name__ == "__main__":
    main()
