"""Stochastic gradient descent with momentum, Nesterov momentum and weight decay."""

from __future__ import annotations

from ..errors import ConfigurationError
from .base import Optimizer
from .hyperparameters import Hyperparameters, flag, real


class SGD(Optimizer):
    r"""Stochastic gradient descent, as ``torch.optim.SGD``.

    With gradient :math:`g_t`, weight decay :math:`\lambda`, momentum :math:`\mu`,
    dampening :math:`\tau` and learning rate :math:`\eta`:

    .. math::

        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        b_t &= \begin{cases} g_t & t = 1 \\
                             \mu b_{t-1} + (1 - \tau) g_t & t > 1 \end{cases} \\
        d_t &= \begin{cases} g_t + \mu b_t & \text{Nesterov} \\
                             b_t & \text{otherwise} \end{cases} \\
        \theta_t &= \theta_{t-1} - \eta d_t

    Without momentum (:math:`\mu = 0`), :math:`d_t = g_t`: plain mini-batch gradient
    descent.

    Parameters
    ----------
    params : iterable of Parameter
        The parameters to train, e.g. ``model.parameters()``.
    lr : float, default 1e-3
        Learning rate :math:`\eta` (>= 0).
    momentum : float, default 0
        Momentum factor :math:`\mu` (>= 0).
    dampening : float, default 0
        Dampening :math:`\tau` of the gradient added to the momentum buffer.
    nesterov : bool, default False
        Nesterov momentum; needs ``momentum > 0`` and ``dampening == 0``.
    weight_decay : float, default 0
        L2 penalty :math:`\lambda` (>= 0), added to the gradient.
    l1, max_norm, clip_grad_norm : keyword-only
        The options every optimizer takes; see :class:`~dualnn.optim.Optimizer`.

    Notes
    -----
    The classic notes write momentum as :math:`V \leftarrow \gamma V + \eta \nabla`,
    :math:`W \leftarrow W - V`. With a constant learning rate this is the same
    trajectory as the form above (:math:`V = \eta b`, :math:`\gamma = \mu`); the form
    above, PyTorch's, keeps the step size right when a schedule changes ``lr``.
    The buffer starts as the first gradient (PyTorch's choice), not as zeros.

    State per parameter: ``momentum_buffer`` (when ``momentum > 0``) and ``step``.
    """

    hyperparameters = Hyperparameters(
        lr=real(1e-3, low=0.0),
        momentum=real(0.0, low=0.0),
        dampening=real(0.0),
        nesterov=flag(False),
        weight_decay=real(0.0, low=0.0))
    state_keys = ("momentum_buffer",)
    elementwise_update = True
    scaled_update = True

    def check_hyperparameters(self, hyper):
        if hyper["nesterov"] and (hyper["momentum"] <= 0 or hyper["dampening"] != 0):
            raise ConfigurationError(
                f"{type(self).__name__}: Nesterov momentum requires momentum > 0 and "
                f"dampening == 0, got momentum={hyper['momentum']!r}, "
                f"dampening={hyper['dampening']!r}")
        return hyper

    def update(self, p, grad, state):
        scaling = self.scaling_args()
        if scaling:  # the first step is decided on the device: step - skipped == 1
            scaling["step"] = state["step"]
        buffer = None
        first_step = False
        if self.momentum != 0:
            buffer = state.get("momentum_buffer")
            if buffer is None:
                buffer = self.zeros_state(p)
                state["momentum_buffer"] = buffer
                first_step = True
        p.backend.sgd_update(p.data, grad, buffer, lr=self.lr, momentum=self.momentum,
                             dampening=self.dampening, nesterov=self.nesterov,
                             weight_decay=self.weight_decay, first_step=first_step,
                             **scaling)
