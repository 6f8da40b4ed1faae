"""Checks kept on the device: label range, non-finite gradients, the clipping factor.

Each must give the CPU's answer (or error) while reading the device at most once.
"""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
from dualnn.errors import LabelError, NonFiniteError
from dualnn.optim import constraints
from tests.cupy_double import double
from tests.cupy_double.helpers import BATCH, OUT, data, mlp


def _gpu():
    return dn.device.backend_for("gpu")


@pytest.mark.parametrize("cls", [dn.losses.SoftmaxCrossEntropy, dn.losses.Hinge])
@pytest.mark.parametrize("bad", [OUT, -1])
def test_bad_label_raises_at_the_deferred_read(cls, bad):
    gpu = _gpu()
    rng = np.random.default_rng(0)
    logits = gpu.asarray(rng.standard_normal((BATCH, OUT)))
    good = rng.integers(0, OUT, BATCH)
    wrong = good.copy()
    wrong[3] = bad
    loss = cls()
    loss.label_check_interval = 3
    with double.counting() as counts:
        loss.forward(logits, gpu.asarray(good))
        loss.forward(logits, gpu.asarray(wrong))  # accumulated, not read yet
    assert counts.sync == 0
    with pytest.raises(LabelError, match=rf"\[0, {OUT}\).*a label of {bad} in one of the last 3"):
        loss.forward(logits, gpu.asarray(good))
    # the range was reset: good labels pass again, and an explicit read finds nothing
    loss.forward(logits, gpu.asarray(good))
    loss.check_pending_labels()


def test_check_pending_labels_reads_once_and_raises():
    gpu = _gpu()
    logits = gpu.asarray(np.zeros((BATCH, OUT)))
    labels = np.zeros(BATCH, dtype=np.int64)
    labels[0] = OUT + 5
    loss = dn.losses.SoftmaxCrossEntropy()
    loss.forward(logits, gpu.asarray(labels))
    with double.counting() as counts, pytest.raises(LabelError, match=f"a label of {OUT + 5}"):
        loss.check_pending_labels()
    assert counts.sync == 1


def test_cpu_label_check_stays_immediate(cpu_backend):
    logits = np.zeros((BATCH, OUT))
    labels = np.full(BATCH, OUT)
    with pytest.raises(LabelError, match=f"from {OUT} to {OUT}"):
        dn.losses.SoftmaxCrossEntropy()(logits, labels)


def _model_with_grads(backend, poison=None):
    x, y = data("softmax_cross_entropy")
    with dn.use_backend(backend):
        dn.seed(3)
        model = mlp()
        loss = dn.losses.SoftmaxCrossEntropy()
        loss.forward(model.forward(backend.asarray(x), training=True), backend.asarray(y))
        model.backward(loss.backward())
    if poison is not None:
        p = model.parameters()[poison]
        grad = backend.to_host(p.grad)
        grad.reshape(-1)[1] = np.nan
        backend.assign(p.grad, backend.asarray(grad))
    return model


@pytest.mark.parametrize("poison", [0, 3])
def test_step_check_finite_names_the_parameter_with_one_read(poison):
    gpu = _gpu()
    model = _model_with_grads(gpu, poison)
    params = model.parameters()
    before = [gpu.to_host(p.data).copy() for p in params]
    opt = dn.optim.Adam(params, lr=0.1)
    with double.counting() as counts, pytest.raises(NonFiniteError) as info:
        opt.step(check_finite=True)
    assert counts.sync == 1
    assert params[poison].name in str(info.value)
    for p, old in zip(params, before):
        np.testing.assert_array_equal(gpu.to_host(p.data), old)
    assert opt.first_nonfinite() == poison
    assert opt.first_nonfinite(extra=(gpu.asarray(np.array(np.inf)),)) == 0


def test_finite_gradients_pass_the_check():
    gpu = _gpu()
    opt = dn.optim.SGD(_model_with_grads(gpu).parameters(), lr=0.1)
    assert opt.first_nonfinite() == -1
    opt.step(check_finite=True)


@pytest.mark.parametrize("max_norm", [1e-3, 1e3])
def test_device_clip_factor_equals_the_host_formula(max_norm, cpu_backend):
    gpu = _gpu()
    model = _model_with_grads(gpu)
    params = model.parameters()
    grads = [p.grad for p in params]
    host_norm = np.sqrt(sum(float((gpu.to_host(g) ** 2).sum()) for g in grads))
    out = gpu.zeros((), "float64")
    constraints.clip_factor_on_device(gpu, grads, max_norm, out)  # allocates its scratch
    with double.counting() as counts:
        constraints.clip_factor_on_device(gpu, grads, max_norm, out)
    assert counts.sync == 0 and counts.alloc == 0  # buffers warmed up by the first call
    expected = min(1.0, max_norm / (host_norm + constraints.CLIP_EPS))
    assert float(gpu.to_host(out)) == pytest.approx(expected, rel=1e-12)
    assert constraints.global_grad_norm(params) == pytest.approx(host_norm, rel=1e-12)


def test_clipping_hook_matches_cpu_and_leaves_grad_alone(cpu_backend):
    gpu = _gpu()
    gpu_model, cpu_model = _model_with_grads(gpu), _model_with_grads(cpu_backend)
    hook = dn.optim.hooks.GradientClipping(0.01)
    results = []
    for backend, model in ((gpu, gpu_model), (cpu_backend, cpu_model)):
        opt = dn.optim.SGD(model.parameters(), lr=0.1)
        grads = [p.grad for p in model.parameters()]
        originals = [backend.to_host(g).copy() for g in grads]
        clipped = hook.before_update(opt, grads)
        for g, original in zip(grads, originals):
            np.testing.assert_array_equal(backend.to_host(g), original)
        results.append([backend.to_host(c) for c in clipped])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    total = np.sqrt(sum((r ** 2).sum() for r in results[0]))
    assert total == pytest.approx(0.01, rel=1e-3)  # eps 1e-6 in the divisor
    assert total < 0.01
