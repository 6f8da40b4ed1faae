"""Measure host syncs and new device allocations per warmed-up GPU training step.

The contract: a steady-state GPU training step performs 0 host synchronizations and
allocates 0 new device arrays after the first step; opt-in features (gradient clipping,
non-finite checks, Hinge, evaluate) meet the same budget or document their one read.
Each scenario reports array objects created (``allocs``) and new device memory
(``pool_growth``: requests CuPy's memory pool could not serve from a freed block).

Run it for a table (needs the simulator and the double, like the tests)::

    NUMBA_ENABLE_CUDASIM=1 python -m tests.cupy_double.budgets
"""

from __future__ import annotations

import gc

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
        self.pool_growth = counts.pool_growth / steps
        self.h2d = counts.h2d / steps
        self.sync_sites = counts.where("sync")
        self.alloc_sites = counts.where("alloc")
        self.growth_sites = counts.where("pool_growth")

    def line(self):
        return (f"BUDGET {self.name:<28} syncs/step={self.sync:<5g} allocs/step="
                f"{self.alloc:<5g} pool_growth/step={self.pool_growth:<5g} "
                f"h2d/step={self.h2d:g}")

    def __repr__(self):
        return (self.line() + (f"\n  syncs: {self.sync_sites}" if self.sync else "")
                + (f"\n  allocs: {self.alloc_sites}" if self.alloc else "")
                + (f"\n  pool growth: {self.growth_sites}" if self.pool_growth else ""))


def _pool():
    import cupy  # the double (installed by the tests' conftest or by main)

    return cupy.get_default_memory_pool()


def _gpu():
    """The GPU backend, with an empty memory pool: a scenario's warm-up fills it with the
    blocks its steady state reuses, none left over from an earlier scenario."""
    gc.collect()
    _pool().free_all_blocks()
    return dn.device.backend_for("gpu")


def _optimizer(kind, params, **options):
    if kind == "adam":
        return dn.optim.Adam(params, lr=1e-3, **options)
    if kind == "lamb":
        return dn.optim.LAMB(params, lr=1e-3, **options)
    return dn.optim.SGD(params, lr=1e-2, momentum=0.9, **options)


def explicit_step(name="explicit", loss="softmax_cross_entropy", optimizer="adam",
                  check_labels=False, check_finite=False, options=None,
                  allocation_free=False, keep_losses=False, **model_options):
    """Budget of ``forward, loss, backward, opt.step, zero_grad`` on device-resident data.

    The plain loop keeps each step's output, 0-d loss and ``dL/dx`` in new arrays (the
    caller may keep them); with ``allocation_free`` it is written as docs/gpu_training.md
    shows: the output and the loss into arrays allocated once (``out=``), and no input
    gradient (``input_grad=False``). ``keep_losses`` keeps every step's loss in a list (a
    loop that reads them at the end): each one is new device memory.
    """
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
        output = backend.empty(model.output_shape(xd.shape), "float64")
        loss_value = backend.zeros((), "float64")

        kept = []

        def plain_step():
            out = model.forward(xd, training=True)
            loss = loss_fn.forward(out, yd)
            if keep_losses:
                kept.append(loss)
            model.backward(loss_fn.backward())
            opt.step(check_finite=check_finite)
            opt.zero_grad()

        def allocation_free_step():
            out = model.forward(xd, training=True, out=output)
            assert out is output
            loss_fn.forward(out, yd, out=loss_value)
            model.backward(loss_fn.backward(), input_grad=False)
            opt.step(check_finite=check_finite)
            opt.zero_grad()

        step = allocation_free_step if allocation_free else plain_step

        for _ in range(WARMUP):
            step()
        # Spare blocks left by building the model would hide a step that keeps memory: drop
        # them, and let one more step leave exactly the blocks a step frees.
        _pool().free_all_blocks()
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

        run(2 * BATCH), run(4 * BATCH)  # warm up (the pool then holds both uploads' sizes)
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


EXPLICIT = {
    "explicit": {},
    "explicit_sgd_momentum": {"optimizer": "sgd"},
    "explicit_mse": {"loss": "mse"},
    "explicit_bce": {"loss": "binary_cross_entropy"},
    "explicit_batchnorm": {"batchnorm": True},
    "explicit_dropout": {"dropout": 0.2},
    "explicit_l1": {"options": {"l1": 1e-4}},
    "explicit_max_norm": {"options": {"max_norm": 2.0}},
    "explicit_label_check": {"check_labels": True},
    "hinge": {"loss": "hinge"},
    "clip_grad_norm": {"options": {"clip_grad_norm": 1.0}},
    "check_finite": {"check_finite": True},
}
"""Explicit-loop scenarios: name -> :func:`explicit_step` options. Each also runs written
allocation-free, as ``<name>_out``."""

STEP_CORE = 3
"""Arrays the plain explicit loop creates per step, all handed to the caller: the model's
output, the 0-d loss and ``dL/dx`` of the first Linear."""


def _explicit(name, allocation_free):
    options = EXPLICIT[name]
    label = name + ("_out" if allocation_free else "")
    return lambda: explicit_step(label, allocation_free=allocation_free, **options)


SCENARIOS = {
    **{name: _explicit(name, False) for name in EXPLICIT},
    **{name + "_out": _explicit(name, True) for name in EXPLICIT},
    "explicit_keeping_losses": lambda: explicit_step("explicit_keeping_losses",
                                                     keep_losses=True),
    "fit": lambda: fit_step(),
    "fit_check_finite": lambda: fit_step("fit_check_finite", check_finite=True),
    "fit_mse": lambda: fit_step("fit_mse", loss="mse"),
    "fit_bce": lambda: fit_step("fit_bce", loss="binary_cross_entropy"),
    "fit_hinge": lambda: fit_step("fit_hinge", loss="hinge"),
    "fit_dropout_batchnorm": lambda: fit_step("fit_dropout_batchnorm", dropout=0.2,
                                              batchnorm=True),
    "fit_epoch": lambda: fit_epoch(),
    "fit_mixed_float16": lambda: fit_mixed_float16_step(),
    "fit_mixed_float16_sgd": lambda: fit_mixed_float16_step("fit_mixed_float16_sgd", "sgd"),
    "fit_mixed_float16_lamb": lambda: fit_mixed_float16_step("fit_mixed_float16_lamb",
                                                             "lamb"),
    "explicit_loss_scaler_lamb": lambda: explicit_loss_scaler_step(
        "explicit_loss_scaler_lamb", "lamb"),
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
