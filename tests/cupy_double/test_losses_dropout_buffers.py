"""GPU losses and dropout write into reused arrays: same values as the CPU, no aliasing of
what the caller keeps, ``out=`` honoured, the dropout draws unchanged."""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
from dualnn.errors import ShapeError
from tests.cupy_double import double
from tests.cupy_double.helpers import tolerance

cupy = pytest.importorskip("cupy")

ELEMENTWISE = ("mse", "binary_cross_entropy")


def _gpu():
    return dn.device.backend_for("gpu")


def _case(name, dtype, seed=0, n=6, k=5):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, k)) * 3
    if name == "binary_cross_entropy":
        z[0, :3] = [-800.0, 800.0, 0.0]  # exp would overflow outside the stable form
        target = (rng.random((n, k)) > 0.5).astype(dtype)
    elif name == "mse":
        target = rng.standard_normal((n, k)).astype(dtype)
    else:
        target = rng.integers(0, k, n)
    return z.astype(dtype), target


def _run(backend, name, reduction, z, target, out=False):
    loss_fn = dn.losses.get(name)(reduction=reduction)
    zd = backend.asarray(z)
    td = backend.asarray(target)
    kwargs = {"out": backend.zeros((), str(z.dtype))} if out else {}
    loss = loss_fn.forward(zd, td, **kwargs)
    if out:
        assert loss is kwargs["out"]
    return backend.item(loss), np.array(backend.to_host(loss_fn.backward()))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ELEMENTWISE + ("hinge", "softmax_cross_entropy"))
@pytest.mark.parametrize("out", [False, True])
def test_gpu_loss_and_gradient_equal_the_cpu(name, reduction, dtype, out, cpu_backend):
    z, target = _case(name, dtype)
    got = _run(_gpu(), name, reduction, z, target, out)
    want = _run(cpu_backend, name, reduction, z, target)
    assert np.isfinite(got[0]) and np.isfinite(got[1]).all()
    np.testing.assert_allclose(got[0], want[0], **tolerance(dtype))
    np.testing.assert_allclose(got[1], want[1], **tolerance(dtype))


@pytest.mark.parametrize("name", ELEMENTWISE + ("hinge",))
def test_gradient_array_is_reused_and_losses_are_not(name):
    """``backward()``'s array is the loss's own (rewritten by the next forward); the loss
    returned without ``out=`` is a new array each call (the caller may keep it)."""
    gpu = _gpu()
    z1, target = _case(name, "float64", seed=1)
    z2, _ = _case(name, "float64", seed=2)
    loss_fn = dn.losses.get(name)()
    t = gpu.asarray(target)
    first = loss_fn.forward(gpu.asarray(z1), t)
    first_value = gpu.item(first)
    grad = loss_fn.backward()
    second = loss_fn.forward(gpu.asarray(z2), t)
    assert loss_fn.backward() is grad
    assert second is not first and gpu.item(first) == first_value
    other = dn.losses.get(name)()
    other.forward(gpu.asarray(z1), t)
    assert other.backward() is not grad  # one gradient array per loss object


def test_loss_out_must_be_a_0d_array_of_the_predictions_dtype():
    gpu = _gpu()
    z, target = _case("mse", "float64")
    loss_fn = dn.losses.MSE()
    for bad in (gpu.zeros((1,), "float64"), gpu.zeros((), "float32"), np.zeros(())):
        with pytest.raises(ShapeError, match="out must be a 0-d float64 array"):
            loss_fn.forward(gpu.asarray(z), gpu.asarray(target), out=bad)


@pytest.mark.parametrize("name", ELEMENTWISE + ("hinge",))
def test_losses_allocate_only_the_returned_loss(name):
    gpu = _gpu()
    z, target = _case(name, "float64")
    zd, td = gpu.asarray(z), gpu.asarray(target)
    loss_fn = dn.losses.get(name)()
    loss_fn.forward(zd, td)  # first call: gradient array and scratch
    with double.counting() as counts:
        loss_fn.forward(zd, td)
    assert counts.alloc == 1, counts.where("alloc")
    kept = gpu.zeros((), "float64")
    with double.counting() as counts:
        loss_fn.forward(zd, td, out=kept)
    assert counts.alloc == 0, counts.where("alloc")


def test_dropout_keeps_the_generators_draws_and_one_mask_array():
    """The mask is ``(u >= p) / (1 - p)`` for the backend generator's next uniform draws,
    as before the mask moved into a reused array; later forwards rewrite that array."""
    gpu = _gpu()
    shape, p = (32, 16), 0.3
    with dn.use_backend(gpu):
        dn.seed(11)
        drop = dn.layers.Dropout(p)
        x = gpu.asarray(np.ones(shape), "float64")
        drop.forward(x, training=True)
        first = drop._mask
        want = (gpu.to_host(cupy.random.default_rng(11).random(shape)) >= p) / (1 - p)
        np.testing.assert_array_equal(gpu.to_host(first), want)
        out = gpu.empty(shape, "float64")
        y = drop.forward(x, training=True, out=out)
        assert y is out and drop._mask is first
        np.testing.assert_array_equal(gpu.to_host(y), gpu.to_host(first))
        with double.counting() as counts:
            drop.forward(x, training=True, out=out)
        assert counts.alloc == 0, counts.where("alloc")


def test_gpu_bce_runs_the_fused_kernel(monkeypatch):
    """Terms and gradient in one launch (``kernels/binary_xent``), then the sum."""
    from dualnn.kernels import cuda as ck

    calls = []
    launcher = ck.binary_xent_terms

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return launcher(*args, **kwargs)

    monkeypatch.setattr(ck, "binary_xent_terms", spy)
    gpu = _gpu()
    z, target = _case("binary_cross_entropy", "float32")
    loss_fn = dn.losses.BinaryCrossEntropy()
    loss_fn.forward(gpu.asarray(z), gpu.asarray(target))
    assert calls == [z.shape]
