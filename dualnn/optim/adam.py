"""Adam (L2 weight decay in the gradient) and AdamW (decoupled weight decay)."""

from __future__ import annotations

from .base import Optimizer
from .hyperparameters import Hyperparameters, real, real_pair


class Adam(Optimizer):
    r"""Adam, as ``torch.optim.Adam`` (without AMSGrad).

    With gradient :math:`g_t`, weight decay :math:`\lambda`, betas
    :math:`(\beta_1, \beta_2)`, learning rate :math:`\eta` and step :math:`t` (from 1):

    .. math::

        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \theta_t &= \theta_{t-1} - \frac{\eta}{1 - \beta_1^t}\,
                    \frac{m_t}{\sqrt{v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    with :math:`m_0 = v_0 = 0`.

    Parameters
    ----------
    params : iterable of Parameter
        The parameters to train, e.g. ``model.parameters()``.
    lr : float, default 1e-3
        Learning rate :math:`\eta` (>= 0).
    betas : (float, float), default (0.9, 0.999)
        Decay rates of the first and second moment estimates, each in [0, 1).
    eps : float, default 1e-8
        Added to the denominator (>= 0).
    weight_decay : float, default 0
        L2 penalty :math:`\lambda` (>= 0), added to the gradient (for the decoupled form
        use :class:`AdamW`).
    l1, max_norm, clip_grad_norm : keyword-only
        The options every optimizer takes; see :class:`~dualnn.optim.Optimizer`.

    Notes
    -----
    State per parameter: ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`), ``step``.
    """

    hyperparameters = Hyperparameters(
        lr=real(1e-3, low=0.0),
        betas=real_pair((0.9, 0.999), low=0.0, high=1.0, high_open=True),
        eps=real(1e-8, low=0.0),
        weight_decay=real(0.0, low=0.0))
    state_keys = ("exp_avg", "exp_avg_sq")
    elementwise_update = True
    scaled_update = True
    decoupled = False

    def update(self, p, grad, state):
        exp_avg = self.state_buffer(state, p, "exp_avg")
        exp_avg_sq = self.state_buffer(state, p, "exp_avg_sq")
        beta1, beta2 = self.betas
        p.backend.adam_update(p.data, grad, exp_avg, exp_avg_sq, step=state["step"],
                              lr=self.lr, beta1=beta1, beta2=beta2, eps=self.eps,
                              weight_decay=self.weight_decay, decoupled=self.decoupled,
                              **self.scaling_args())


class AdamW(Adam):
    r"""Adam with decoupled weight decay, as ``torch.optim.AdamW``.

    The parameter is first shrunk, :math:`\theta \leftarrow \theta (1 - \eta \lambda)`,
    and then updated by Adam's rule on the raw gradient (no :math:`\lambda \theta` in
    :math:`g_t`):

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \theta_t &= \theta_{t-1}(1 - \eta\lambda) - \frac{\eta}{1 - \beta_1^t}\,
                    \frac{m_t}{\sqrt{v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    Parameters
    ----------
    params : iterable of Parameter
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 1e-2
        Decoupled decay rate :math:`\lambda` (>= 0).
    l1, max_norm, clip_grad_norm : keyword-only
        The options every optimizer takes; see :class:`~dualnn.optim.Optimizer`.

    Notes
    -----
    State per parameter: ``exp_avg``, ``exp_avg_sq``, ``step``.
    """

    hyperparameters = Adam.hyperparameters.with_defaults(weight_decay=1e-2)
    decoupled = True
