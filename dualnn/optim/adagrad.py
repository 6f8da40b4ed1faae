"""Adagrad: per-coordinate learning rates from the sum of squared gradients."""

from __future__ import annotations

from .base import Optimizer
from .hyperparameters import Hyperparameters, real


class Adagrad(Optimizer):
    r"""Adagrad, as ``torch.optim.Adagrad`` (initial accumulator 0).

    With gradient :math:`g_t`, weight decay :math:`\lambda`, learning rate :math:`\eta`,
    decay :math:`\delta` and step :math:`t` (from 1):

    .. math::

        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        \tilde\eta_t &= \frac{\eta}{1 + (t - 1)\,\delta} \\
        s_t &= s_{t-1} + g_t^2 \\
        \theta_t &= \theta_{t-1} - \tilde\eta_t \frac{g_t}{\sqrt{s_t} + \epsilon}

    with :math:`s_0 = 0`.

    Parameters
    ----------
    params : iterable of Parameter
        The parameters to train, e.g. ``model.parameters()``.
    lr : float, default 1e-2
        Learning rate :math:`\eta` (>= 0).
    lr_decay : float, default 0
        Learning-rate decay :math:`\delta` (>= 0).
    weight_decay : float, default 0
        L2 penalty :math:`\lambda` (>= 0), added to the gradient.
    eps : float, default 1e-10
        Added to the denominator (>= 0).
    l1, max_norm, clip_grad_norm : keyword-only
        The options every optimizer takes; see :class:`~dualnn.optim.Optimizer`.

    Notes
    -----
    State per parameter: ``sum`` (:math:`s`) and ``step``.
    """

    hyperparameters = Hyperparameters(
        lr=real(1e-2, low=0.0),
        lr_decay=real(0.0, low=0.0),
        weight_decay=real(0.0, low=0.0),
        eps=real(1e-10, low=0.0))
    state_keys = ("sum",)
    elementwise_update = True
    scaled_update = True

    def update(self, p, grad, state):
        state_sum = self.state_buffer(state, p, "sum")
        p.backend.adagrad_update(p.data, grad, state_sum, step=state["step"], lr=self.lr,
                                 lr_decay=self.lr_decay, weight_decay=self.weight_decay,
                                 eps=self.eps, **self.scaling_args())
