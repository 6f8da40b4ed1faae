"""Tiny models, data and runs shared by the CuPy-double tests (8 -> 16 -> 4)."""

from __future__ import annotations

import numpy as np

import dualnn as dn

IN, HIDDEN, OUT, BATCH = 8, 16, 4, 8


def tolerance(dtype):
    return {"rtol": 1e-4, "atol": 1e-5} if dtype == "float32" else {"rtol": 1e-9,
                                                                     "atol": 1e-11}


def data(loss_name, n=BATCH, seed=0):
    """``(x, y)`` host data for ``loss_name`` (labels for the classification losses)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, IN))
    if loss_name in ("softmax_cross_entropy", "hinge"):
        y = rng.integers(0, OUT, n)
    elif loss_name == "binary_cross_entropy":
        y = (rng.random((n, OUT)) > 0.5).astype(np.float64)
    else:
        y = rng.standard_normal((n, OUT))
    return x, y


def mlp(dtype="float64", batchnorm=False, dropout=None):
    layers = [dn.layers.Linear(IN, HIDDEN, bias=not batchnorm, dtype=dtype)]
    if batchnorm:
        layers.append(dn.layers.BatchNorm(HIDDEN, dtype=dtype))
    layers.append(dn.layers.ReLU())
    if dropout is not None:
        layers.append(dn.layers.Dropout(dropout))
    layers.append(dn.layers.Linear(HIDDEN, OUT, dtype=dtype))
    return dn.Sequential(*layers)


def make_loss(name):
    cls = dn.losses.get(name)
    return cls()


def to_device(backend, y, dtype):
    return backend.asarray(y) if y.dtype.kind in "iu" else backend.asarray(y, dtype)


def explicit_steps(backend, make_optimizer, loss_name="softmax_cross_entropy", steps=3,
                   dtype="float64", **model_options):
    """Train ``steps`` explicit steps on ``backend``; returns host losses, params and
    optimizer state (everything read after the run)."""
    x, y = data(loss_name)
    with dn.use_backend(backend):
        dn.seed(7)
        model = mlp(dtype, **model_options)
        optimizer = make_optimizer(model.parameters())
        loss_fn = make_loss(loss_name)
        xd, yd = backend.asarray(x, dtype), to_device(backend, y, dtype)
        losses = []
        for _ in range(steps):
            out = model.forward(xd, training=True)
            loss = loss_fn.forward(out, yd)
            losses.append(loss)
            model.backward(loss_fn.backward())
            optimizer.step()
            optimizer.zero_grad()
        losses = [backend.item(v) for v in losses]
        params = [backend.to_host(p.data).copy() for p in model.parameters()]
        state = optimizer.state_dict()["state"]
    return losses, params, state


def assert_runs_match(gpu, cpu, dtype="float64"):
    tol = tolerance(dtype)
    np.testing.assert_allclose(gpu[0], cpu[0], **tol)
    assert len(gpu[1]) == len(cpu[1])
    for a, b in zip(gpu[1], cpu[1]):
        np.testing.assert_allclose(a, b, **tol)
    assert gpu[2].keys() == cpu[2].keys()
    for index in cpu[2]:
        assert gpu[2][index].keys() == cpu[2][index].keys()
        for key, value in cpu[2][index].items():
            assert isinstance(gpu[2][index][key], type(value))
            np.testing.assert_allclose(gpu[2][index][key], value, **tol)


class KernelLaunches:
    """Names of the kernels launched through the CUDA simulator while installed
    (``install(monkeypatch)``; ``names`` is cleared by the caller as needed)."""

    def __init__(self, monkeypatch=None):
        self.names = []
        if monkeypatch is not None:
            self.install(monkeypatch)

    def install(self, monkeypatch):
        from dualnn.kernels import _cuda

        real = _cuda._SimulatorLaunch.__getitem__
        names = self.names

        def counting(launcher, config):
            kernel = launcher.kernel
            names.append(getattr(getattr(kernel, "py_func", kernel), "__name__", repr(kernel)))
            return real(launcher, config)

        monkeypatch.setattr(_cuda._SimulatorLaunch, "__getitem__", counting)
