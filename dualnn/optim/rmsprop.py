"""RMSprop, optionally centered and with momentum."""

from __future__ import annotations

from .base import Optimizer
from .hyperparameters import Hyperparameters, flag, real


class RMSprop(Optimizer):
    r"""RMSprop, as ``torch.optim.RMSprop``.

    With gradient :math:`g_t`, weight decay :math:`\lambda`, smoothing :math:`\alpha`,
    momentum :math:`\mu` and learning rate :math:`\eta`:

    .. math::

        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        v_t &= \alpha v_{t-1} + (1 - \alpha) g_t^2 \\
        a_t &= \begin{cases}
            \sqrt{v_t - \bar g_t^2} + \epsilon,\quad
            \bar g_t = \alpha \bar g_{t-1} + (1 - \alpha) g_t & \text{centered} \\
            \sqrt{v_t} + \epsilon & \text{otherwise} \end{cases} \\
        b_t &= \mu b_{t-1} + g_t / a_t, \qquad
        \theta_t = \theta_{t-1} - \eta b_t \quad (\mu > 0) \\
        \theta_t &= \theta_{t-1} - \eta\, g_t / a_t \quad (\mu = 0)

    with all state starting at zero.

    Parameters
    ----------
    params : iterable of Parameter
        The parameters to train, e.g. ``model.parameters()``.
    lr : float, default 1e-2
        Learning rate :math:`\eta` (>= 0).
    alpha : float, default 0.99
        Smoothing constant :math:`\alpha` (>= 0).
    eps : float, default 1e-8
        Added to the denominator (>= 0).
    weight_decay : float, default 0
        L2 penalty :math:`\lambda` (>= 0), added to the gradient.
    momentum : float, default 0
        Momentum factor :math:`\mu` (>= 0).
    centered : bool, default False
        Normalize by an estimate of the gradient's variance instead of its second moment.
    l1, max_norm, clip_grad_norm : keyword-only
        The options every optimizer takes; see :class:`~dualnn.optim.Optimizer`.

    Notes
    -----
    State per parameter: ``square_avg`` (:math:`v`), ``momentum_buffer`` (when
    ``momentum > 0``), ``grad_avg`` (:math:`\bar g`, when centered) and ``step``.
    """

    hyperparameters = Hyperparameters(
        lr=real(1e-2, low=0.0),
        alpha=real(0.99, low=0.0),
        eps=real(1e-8, low=0.0),
        weight_decay=real(0.0, low=0.0),
        momentum=real(0.0, low=0.0),
        centered=flag(False))
    state_keys = ("square_avg", "momentum_buffer", "grad_avg")
    elementwise_update = True
    scaled_update = True

    def update(self, p, grad, state):
        square_avg = self.state_buffer(state, p, "square_avg")
        buffer = grad_avg = None
        if self.momentum > 0:
            buffer = self.state_buffer(state, p, "momentum_buffer")
        if self.centered:
            grad_avg = self.state_buffer(state, p, "grad_avg")
        p.backend.rmsprop_update(p.data, grad, square_avg, buffer, grad_avg, lr=self.lr,
                                 alpha=self.alpha, eps=self.eps,
                                 weight_decay=self.weight_decay, momentum=self.momentum,
                                 centered=self.centered, **self.scaling_args())
