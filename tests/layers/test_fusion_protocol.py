"""The layer protocol Sequential runs: fused blocks, forward/backward options, user layers."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

import dualnn as dn
from dualnn import layers as L
from dualnn.errors import ConfigurationError, ShapeError
from dualnn.layers.fusion import FusedBlock


def _x(backend, rng, shape):
    return backend.asarray(rng.standard_normal(shape), "float64")


def _host(backend, a):
    return np.asarray(backend.to_host(a))


def _stack(fuse):
    dn.seed(11)
    return dn.Sequential(
        L.Linear(5, 8, dtype="float64"), L.ReLU(),
        L.Linear(8, 8, bias=False, dtype="float64"), L.BatchNorm(8, dtype="float64"), L.ReLU(),
        L.Linear(8, 8, dtype="float64"), L.LeakyReLU(0.1),
        L.Linear(8, 8, dtype="float64"), L.Tanh(),
        L.Linear(8, 8, dtype="float64"), L.Sigmoid(),
        L.Dropout(0.0), L.Linear(8, 3, dtype="float64"), fuse=fuse)


def _run(backend, model, xs, dys, training, input_grad=True):
    """Outputs, input gradients and parameter gradients over a few steps."""
    results = []
    for x, dy in zip(xs, dys):
        model.zero_grad()
        y = model.forward(x, training=training)
        dx = model.backward(dy, input_grad=input_grad)
        results.append((_host(backend, y).copy(), None if dx is None else _host(backend, dx),
                        [_host(backend, p.grad).copy() for p in model.parameters()]))
    return results


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("input_grad", [True, False])
def test_fused_model_equals_unfused(backend, rng, training, input_grad):
    fused, plain = _stack(True), _stack(False)
    assert [type(s).__name__ for _, s in fused.plan()].count("LinearActivation") == 4
    assert [type(s).__name__ for _, s in fused.plan()].count("BatchNormReLU") == 1
    assert all(step is plain[i] for i, step in plain.plan())
    backend.assign(fused[3].beta.data, _x(backend, rng, (8,)) * 0.5)
    plain.load_state_dict(fused.state_dict())
    xs = [_x(backend, rng, (6, 5)) for _ in range(3)]
    dys = [_x(backend, rng, (6, 3)) for _ in range(3)]
    kept = [_host(backend, dy).copy() for dy in dys]
    got = _run(backend, fused, xs, dys, training, input_grad)
    want = _run(backend, plain, xs, dys, training, input_grad)
    for (y, dx, grads), (y0, dx0, grads0) in zip(got, want):
        np.testing.assert_allclose(y, y0, rtol=1e-6, atol=1e-6)
        if input_grad:
            np.testing.assert_allclose(dx, dx0, rtol=1e-6, atol=1e-6)
        else:
            assert dx is None and dx0 is None
        for g, g0 in zip(grads, grads0):
            np.testing.assert_allclose(g, g0, rtol=1e-6, atol=1e-6)
    for dy, k in zip(dys, kept):  # the caller's gradient is never overwritten
        np.testing.assert_array_equal(_host(backend, dy), k)
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in plain.named_parameters()]


def test_sequential_names_no_concrete_layer_class():
    source = pathlib.Path(L.sequential.__file__).read_text()
    concrete = [name for name in L.__all__
                if name not in ("Layer", "Sequential", "activation", "registered_layer",
                                "FusedBlock")]
    concrete += ["LinearActivation", "BatchNormReLU", "_Elementwise"]
    found = [name for name in concrete if re.search(rf"\b{name}\b", source)]
    assert not found, f"sequential.py names layer classes {found}"
    assert not re.search(r"type\([^)]*\)\s+(is|==|in)\b", source)  # no dispatch on types
    assert "isinstance(layer, Layer)" in source  # the check can see a class name at all


def test_relu_subclass_with_own_forward_is_not_fused(backend, rng):
    class Clipped(L.ReLU):
        def forward(self, x, training=False):
            y = super().forward(x, training)
            return self.xp.minimum(y, 0.5)

    model = dn.Sequential(L.Linear(4, 3, dtype="float64"), Clipped(),
                          L.BatchNorm(3, dtype="float64"), Clipped())
    assert all(step is model[i] for i, step in model.plan())


# ---------------------------------------------------------------------------------------
# a user-defined layer taking part in every capability
# ---------------------------------------------------------------------------------------

class Scale(L.Layer):
    """``y = x * s`` per feature; offers out=, overwrite=, input_grad= and fusion with a
    following :class:`Shift`."""

    forward_options = frozenset({"out"})
    backward_options = frozenset({"overwrite", "input_grad"})

    def __init__(self, n, dtype="float64"):
        super().__init__(dtype=dtype)
        self.add_parameter("s", self.backend.asarray([1.5] * n, self.dtype))
        self.calls = []
        self._x = None

    def forward(self, x, training=False, out=None):
        self.calls.append(("forward", out is not None))
        self._check_input(x)
        self._x = x
        y = x * self.s.data
        if out is not None:
            self.backend.assign(out, y)
            return out
        return y

    def backward(self, dy, *, overwrite=False, input_grad=True):
        self.calls.append(("backward", overwrite, input_grad))
        self._check_grad(dy, None if self._x is None else tuple(self._x.shape), self._x.dtype)
        self.s.grad[...] += self.xp.sum(dy * self._x, axis=0)
        if not input_grad:
            return None
        if overwrite:
            dy *= self.s.data
            return dy
        return dy * self.s.data

    def fuse_next(self, next_layer):
        return ScaleShift(self, next_layer) if isinstance(next_layer, Shift) else None


class Shift(L.Layer):
    """``y = x + t`` per feature (plain contract: no options)."""

    def __init__(self, n, dtype="float64"):
        super().__init__(dtype=dtype)
        self.add_parameter("t", self.backend.asarray([0.25] * n, self.dtype))

    def forward(self, x, training=False):
        self._shape = tuple(x.shape)
        return x + self.t.data

    def backward(self, dy):
        self._check_grad(dy, self._shape, self.t.dtype)
        self.t.grad[...] += self.xp.sum(dy, axis=0)
        return dy


class ScaleShift(FusedBlock):
    """``x * s + t`` in one expression."""

    backward_options = frozenset({"overwrite", "input_grad"})
    runs = 0

    def forward(self, x, training=False):
        scale, shift = self.layers
        ScaleShift.runs += 1
        scale._x = x
        shift._shape = tuple(x.shape)
        return x * scale.s.data + shift.t.data

    def backward(self, dy, *, overwrite=False, input_grad=True):
        scale, shift = self.layers
        dy = shift.backward(dy)
        return scale.backward(dy, overwrite=overwrite, input_grad=input_grad)


def test_user_layer_takes_part(backend, rng):
    def build(fuse):
        return dn.Sequential(Scale(4), Shift(4), L.Linear(4, 4, dtype="float64"), L.Tanh(),
                             Scale(4), L.Linear(4, 2, dtype="float64"), fuse=fuse)

    fused, plain = build(True), build(False)
    assert [(i, type(s).__name__) for i, s in fused.plan()] == [
        (0, "ScaleShift"), (2, "LinearActivation"), (4, "Scale"), (5, "Linear")]
    assert [n for n, _ in fused.named_parameters()] == [
        "0.s", "1.t", "2.weight", "2.bias", "4.s", "5.weight", "5.bias"]
    plain.load_state_dict(fused.state_dict())
    x, dy = _x(backend, rng, (5, 4)), _x(backend, rng, (5, 2))
    kept = _host(backend, dy).copy()
    runs = ScaleShift.runs
    for model in (fused, plain):
        np.testing.assert_allclose(_host(backend, model.forward(x, training=True)),
                                   _host(backend, plain.forward(x, training=True)), rtol=1e-12)
    assert ScaleShift.runs == runs + 1
    grads = []
    for model in (fused, plain):
        model.zero_grad()
        model.forward(x, training=True)
        dx = model.backward(dy)
        grads.append([_host(backend, dx)] + [_host(backend, p.grad) for p in model.parameters()])
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(_host(backend, dy), kept)
    # the options reached the layer: an inner output buffer (where the backend reuses
    # buffers), overwrite of the model's own gradients, and input_grad=False first
    inner = fused[4]
    reuses = getattr(backend, "reuses_buffers", False)
    assert ("forward", reuses) in inner.calls
    assert ("backward", True, True) in inner.calls
    fused[0].calls.clear()
    fused.forward(x, training=True)
    assert fused.backward(dy, input_grad=False) is None
    assert fused[0].calls == [("backward", True, False)]  # through the fused block


def test_user_layer_gradients_pass_gradcheck(backend, rng):
    model = dn.Sequential(Scale(3), Shift(3), L.Linear(3, 2, dtype="float64"), L.ReLU())
    report = dn.gradcheck(model, _x(backend, rng, (4, 3)))
    assert report.passed, str(report)


def test_fuse_next_must_cover_exactly_the_two_layers(backend):
    class Greedy(L.Identity):
        def fuse_next(self, next_layer):
            return FusedBlock(self)

    model = dn.Sequential(Greedy(), L.ReLU())
    with pytest.raises(ConfigurationError, match=r"layer 0 \(Greedy\).fuse_next"):
        model.plan()


# ---------------------------------------------------------------------------------------
# non-float gradients
# ---------------------------------------------------------------------------------------

LAYERS = [
    ("Linear", lambda: L.Linear(4, 4, dtype="float64")),
    ("BatchNorm", lambda: L.BatchNorm(4, dtype="float64")),
    ("ReLU", lambda: L.ReLU()),
    ("Tanh", lambda: L.Tanh()),
    ("Identity", lambda: L.Identity()),
    ("Dropout", lambda: L.Dropout(0.3)),
    ("Softmax", lambda: L.Softmax()),
]


@pytest.mark.parametrize("name,make", LAYERS, ids=[n for n, _ in LAYERS])
@pytest.mark.parametrize("bad", ["complex128", "int64", "bool"])
def test_backward_rejects_a_gradient_of_the_wrong_dtype(rng, name, make, bad):
    layer = make()
    x = rng.standard_normal((5, 4))
    layer.forward(x, training=True)
    dy = np.ones((5, 4), dtype=bad)
    with pytest.raises(ShapeError) as info:
        layer.backward(dy)
    message = str(info.value)
    assert name in message and "float64" in message and bad in message


@pytest.mark.parametrize("name,make", LAYERS, ids=[n for n, _ in LAYERS])
def test_backward_accepts_the_other_float_precision(rng, name, make):
    layer = make()
    layer.forward(rng.standard_normal((5, 4)), training=True)
    dx = layer.backward(np.ones((5, 4), dtype="float32"))
    assert dx.shape == (5, 4)


def test_model_backward_rejects_complex_gradient(rng):
    model = dn.Sequential(L.Linear(4, 3, dtype="float64"), L.BatchNorm(3, dtype="float64"),
                          L.ReLU(), L.Linear(3, 2, dtype="float64"), L.Sigmoid())
    model.forward(rng.standard_normal((5, 4)), training=True)
    with pytest.raises(ShapeError, match=r"Sigmoid.backward: expected a float64 gradient.*"
                                         r"complex128"):
        model.backward(np.ones((5, 2), dtype=complex))
