"""Sequential's execution plan: fused blocks, reused scratch buffers, skipped input gradient."""

from __future__ import annotations

import numpy as np

import dualnn as dn
from dualnn import layers as L


def _model(seed):
    dn.seed(seed)
    return dn.Sequential(L.Linear(6, 8, bias=False), L.BatchNorm(8), L.ReLU(), L.Dropout(0.2),
                         L.Linear(8, 8), L.Tanh(), L.Linear(8, 8), L.BatchNorm(8),
                         L.Linear(8, 3))


def _train(backend, model, steps, input_grad=True):
    rng = np.random.default_rng(0)
    opt = dn.optim.Adam(model.parameters(), lr=0.01)
    loss = dn.losses.SoftmaxCrossEntropy()
    returned = []
    for step in range(steps):
        batch = 5 + step % 3  # changing batch sizes exercise the buffer cache
        x = backend.asarray(rng.standard_normal((batch, 6)), "float32")
        y = backend.asarray(rng.integers(0, 3, batch))
        logits = model.forward(x, training=True)
        loss.forward(logits, y)
        returned.append(model.backward(loss.backward(), input_grad=input_grad))
        opt.step()
        opt.zero_grad()
    return model.state_dict(), returned


def test_buffer_reuse_and_skipped_input_gradient_change_no_result(backend):
    reference_state, dxs = _train(backend, _model(1), 6)
    reuses = backend.reuses_buffers
    try:
        backend.reuses_buffers = False
        state, dxs_plain = _train(backend, _model(1), 6)
    finally:
        backend.reuses_buffers = reuses
    skipped_state, nothing = _train(backend, _model(1), 6, input_grad=False)
    for key in reference_state:
        np.testing.assert_array_equal(reference_state[key], state[key], err_msg=key)
        np.testing.assert_array_equal(reference_state[key], skipped_state[key], err_msg=key)
    assert all(d is None for d in nothing)
    # Returned input gradients are fresh arrays: later steps never overwrite them.
    for ours, theirs in zip(dxs, dxs_plain):
        np.testing.assert_array_equal(backend.to_host(ours), backend.to_host(theirs))


def test_outputs_are_not_overwritten_by_the_next_forward(backend):
    model = _model(2)
    rng = np.random.default_rng(3)
    x1 = backend.asarray(rng.standard_normal((4, 6)), "float32")
    first = model.forward(x1)
    kept = np.array(backend.to_host(first), copy=True)
    model.forward(backend.asarray(rng.standard_normal((4, 6)), "float32"))
    np.testing.assert_array_equal(backend.to_host(first), kept)


def test_plan_fuses_the_blocks_it_should():
    model = _model(0)
    assert [(i, type(step).__name__) for i, step in model.plan()] == [
        (0, "Linear"), (1, "BatchNormReLU"), (3, "Dropout"), (4, "LinearActivation"),
        (6, "Linear"), (7, "BatchNorm"), (8, "Linear")]
    assert [name for name, _ in model.named_parameters()] == [
        "0.weight", "1.gamma", "1.beta", "4.weight", "4.bias", "6.weight", "6.bias",
        "7.gamma", "7.beta", "8.weight", "8.bias"]
