"""Adadelta: step sizes from running averages of squared gradients and updates."""

from __future__ import annotations

from .base import Optimizer
from .hyperparameters import Hyperparameters, real


class Adadelta(Optimizer):
    r"""Adadelta, as ``torch.optim.Adadelta``.

    With gradient :math:`g_t`, weight decay :math:`\lambda`, decay :math:`\rho` and
    learning rate :math:`\eta`:

    .. math::

        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        v_t &= \rho v_{t-1} + (1 - \rho) g_t^2 \\
        \Delta_t &= \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g_t \\
        u_t &= \rho u_{t-1} + (1 - \rho) \Delta_t^2 \\
        \theta_t &= \theta_{t-1} - \eta \Delta_t

    with :math:`v_0 = u_0 = 0`.

    Parameters
    ----------
    params : iterable of Parameter
        The parameters to train, e.g. ``model.parameters()``.
    lr : float, default 1.0
        Scale :math:`\eta` of the step (>= 0).
    rho : float, default 0.9
        Decay of the running averages, in [0, 1].
    eps : float, default 1e-6
        Added inside both square roots (>= 0).
    weight_decay : float, default 0
        L2 penalty :math:`\lambda` (>= 0), added to the gradient.
    l1, max_norm, clip_grad_norm : keyword-only
        The options every optimizer takes; see :class:`~dualnn.optim.Optimizer`.

    Notes
    -----
    State per parameter: ``square_avg`` (:math:`v`), ``acc_delta`` (:math:`u`), ``step``.
    """

    hyperparameters = Hyperparameters(
        lr=real(1.0, low=0.0),
        rho=real(0.9, low=0.0, high=1.0),
        eps=real(1e-6, low=0.0),
        weight_decay=real(0.0, low=0.0))
    state_keys = ("square_avg", "acc_delta")
    elementwise_update = True
    scaled_update = True

    def update(self, p, grad, state):
        square_avg = self.state_buffer(state, p, "square_avg")
        acc_delta = self.state_buffer(state, p, "acc_delta")
        p.backend.adadelta_update(p.data, grad, square_avg, acc_delta, lr=self.lr,
                                  rho=self.rho, eps=self.eps, weight_decay=self.weight_decay,
                                  **self.scaling_args())
