"""fit leaves the objects it is given alone: the loss and the DataLoader come out as they
went in (and are not changed while training either)."""

from __future__ import annotations

import dualnn as dn

from .helpers import digits, mlp


class Spy(dn.callbacks.Callback):
    """Records an attribute of an object at every epoch start."""

    def __init__(self, obj, attr):
        self.obj, self.attr, self.seen = obj, attr, []

    def on_epoch_begin(self, run, epoch):
        self.seen.append(getattr(self.obj, self.attr))


def test_fit_does_not_change_the_users_dataloader():
    data = digits()
    n = 129  # 2 full batches of 64 and a final 1-row batch, dropped for a BatchNorm model
    loader = dn.data.DataLoader(data.X_train[:n], data.y_train[:n], batch_size=64)
    before = dict(vars(loader))
    spy = Spy(loader, "min_batch_size")
    dn.seed(0)
    model = mlp(batch_norm=True)
    h = dn.fit(model, dn.losses.SoftmaxCrossEntropy(), dn.optim.Adam(model.parameters()),
               loader, epochs=2, progress=False, callbacks=[spy])
    assert len(h) == 2
    assert spy.seen == [1, 1]
    assert vars(loader) == before and len(loader) == 3


def test_fit_does_not_change_the_users_loss_on_a_device(monkeypatch):
    """On a GPU fit trains without the per-step label read-back; it must do so on its own
    copy of the loss, not by switching the user's loss off and on."""
    data = digits()
    dn.seed(0)
    model = mlp(batch_norm=False)
    monkeypatch.setattr(model.backend, "device", "gpu:0")  # take the device code path
    loss = dn.losses.SoftmaxCrossEntropy()
    spy = Spy(loss, "check_labels")
    dn.fit(model, loss, dn.optim.Adam(model.parameters()), data.X_train[:256],
           data.y_train[:256], epochs=2, batch_size=64, progress=False, callbacks=[spy])
    assert spy.seen == [True, True]
    assert loss.check_labels is True
