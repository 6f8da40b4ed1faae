"""Forward, backward and a short training run against PyTorch (skipped without torch)."""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
from dualnn import layers as L
from dualnn import losses

torch = pytest.importorskip("torch")


def _t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=True)


ACTIVATIONS = [
    (L.ReLU, torch.nn.ReLU), (lambda: L.LeakyReLU(0.2), lambda: torch.nn.LeakyReLU(0.2)),
    (lambda: L.ELU(0.7), lambda: torch.nn.ELU(0.7)), (L.Sigmoid, torch.nn.Sigmoid),
    (L.Tanh, torch.nn.Tanh), (L.Softmax, lambda: torch.nn.Softmax(dim=1)),
]


@pytest.mark.parametrize("ours,theirs", ACTIVATIONS)
def test_activations(backend, rng, ours, theirs):
    host = rng.standard_normal((6, 5)) * 3
    host[0, :3] = 0.0  # the kink
    layer, ref = ours(), theirs()
    dy = rng.standard_normal((6, 5))
    y = layer.forward(backend.asarray(host, "float64"), training=True)
    dx = layer.backward(backend.asarray(dy, "float64"))
    xt = _t(host)
    yt = ref(xt)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(backend.to_host(y), yt.detach().numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(backend.to_host(dx), xt.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_linear_batchnorm_block_and_running_statistics(backend, rng):
    dn.seed(0)
    ours = dn.Sequential(L.Linear(5, 4, dtype="float64"), L.BatchNorm(4, momentum=0.3,
                                                                     dtype="float64"), L.ReLU())
    lin, bn = torch.nn.Linear(5, 4).double(), torch.nn.BatchNorm1d(4, momentum=0.3).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(ours.state_dict()["0.weight"]))
        lin.bias.copy_(torch.tensor(rng.standard_normal(4)))
        bn.weight.copy_(torch.tensor(rng.uniform(0.5, 2, 4)))
        bn.bias.copy_(torch.tensor(rng.standard_normal(4)))
    ours.load_state_dict(dict(ours.state_dict(), **{
        "0.bias": lin.bias.detach().numpy().copy(), "1.gamma": bn.weight.detach().numpy().copy(),
        "1.beta": bn.bias.detach().numpy().copy()}))
    for step in range(3):
        host = rng.standard_normal((8, 5)) * 2 + step
        dy = rng.standard_normal((8, 4))
        ours.zero_grad()
        y = ours.forward(backend.asarray(host, "float64"), training=True)
        dx = ours.backward(backend.asarray(dy, "float64"))
        xt = _t(host)
        lin.zero_grad()
        bn.zero_grad()
        yt = torch.relu(bn(lin(xt)))
        yt.backward(torch.tensor(dy))
        np.testing.assert_allclose(backend.to_host(y), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(backend.to_host(dx), xt.grad.numpy(), rtol=1e-9, atol=1e-12)
        state = ours.state_dict()
        np.testing.assert_allclose(state["1.running_mean"], bn.running_mean.numpy(), rtol=1e-12)
        np.testing.assert_allclose(state["1.running_var"], bn.running_var.numpy(), rtol=1e-12)
        grads = {name: backend.to_host(p.grad) for name, p in ours.named_parameters()}
        np.testing.assert_allclose(grads["0.weight"], lin.weight.grad.numpy(), rtol=1e-9,
                                   atol=1e-12)
        np.testing.assert_allclose(grads["1.gamma"], bn.weight.grad.numpy(), rtol=1e-9, atol=1e-12)
    bn.eval()
    host = rng.standard_normal((3, 5))
    y = ours.forward(backend.asarray(host, "float64"), training=False)
    np.testing.assert_allclose(backend.to_host(y),
                               torch.relu(bn(lin(_t(host)))).detach().numpy(), rtol=1e-10)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_losses(backend, rng, reduction):
    host = rng.standard_normal((7, 4)) * 3
    labels = rng.integers(0, 4, 7)
    targets = rng.uniform(0, 1, (7, 4))
    cases = [
        (losses.SoftmaxCrossEntropy(reduction=reduction), backend.asarray(labels),
         torch.nn.CrossEntropyLoss(reduction=reduction), torch.tensor(labels)),
        (losses.Hinge(reduction=reduction), backend.asarray(labels),
         torch.nn.MultiMarginLoss(reduction=reduction), torch.tensor(labels)),
        (losses.MSE(reduction=reduction), backend.asarray(targets, "float64"),
         torch.nn.MSELoss(reduction=reduction), torch.tensor(targets)),
        (losses.BinaryCrossEntropy(reduction=reduction), backend.asarray(targets, "float64"),
         torch.nn.BCEWithLogitsLoss(reduction=reduction), torch.tensor(targets)),
    ]
    for ours, target, theirs, ttarget in cases:
        value = ours.forward(backend.asarray(host, "float64"), target)
        xt = _t(host)
        ref = theirs(xt, ttarget)
        ref.backward()
        assert float(backend.to_host(value)) == pytest.approx(ref.item(), rel=1e-12), ours.name
        np.testing.assert_allclose(backend.to_host(ours.backward()), xt.grad.numpy(), rtol=1e-10,
                                   atol=1e-14, err_msg=ours.name)


def test_training_trajectory_matches_torch(backend, rng):
    dn.seed(1)
    ours = dn.Sequential(L.Linear(6, 8, dtype="float64"), L.BatchNorm(8, dtype="float64"),
                         L.Tanh(), L.Linear(8, 3, dtype="float64"))
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(),
                              torch.nn.Linear(8, 3)).double()
    state = ours.state_dict()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor(state["0.weight"]))
        net[0].bias.zero_()
        net[3].weight.copy_(torch.tensor(state["3.weight"]))
        net[3].bias.zero_()
    opt = dn.optim.Adam(ours.parameters(), lr=0.05, weight_decay=0.01)
    topt = torch.optim.Adam(net.parameters(), lr=0.05, weight_decay=0.01)
    loss, tloss = losses.SoftmaxCrossEntropy(), torch.nn.CrossEntropyLoss()
    for _ in range(5):
        host, labels = rng.standard_normal((10, 6)), rng.integers(0, 3, 10)
        value = loss.forward(ours.forward(backend.asarray(host, "float64"), training=True),
                             backend.asarray(labels))
        ours.backward(loss.backward())
        opt.step()
        opt.zero_grad()
        topt.zero_grad()
        ref = tloss(net(torch.tensor(host)), torch.tensor(labels))
        ref.backward()
        topt.step()
        assert float(backend.to_host(value)) == pytest.approx(ref.item(), rel=1e-10)
    final = ours.state_dict()
    np.testing.assert_allclose(final["3.weight"], net[3].weight.detach().numpy(), rtol=1e-9)
    np.testing.assert_allclose(final["1.running_var"], net[1].running_var.numpy(), rtol=1e-10)
