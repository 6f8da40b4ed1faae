"""LAMB: Adam moments with a layer-wise trust ratio (You et al., 2020)."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigurationError
from .base import Optimizer, check_bool, check_real


class LAMB(Optimizer):
    r"""LAMB, layer-wise adaptive moments for large-batch training.

    For each parameter :math:`w` with gradient :math:`g_t` and step :math:`t` (from 1):

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        r_t &= \frac{m_t / (1 - \beta_1^t)}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon}
               + \lambda w_{t-1} \\
        \phi_t &= \frac{\lVert w_{t-1} \rVert}{\lVert r_t \rVert}
                  \quad (1 \text{ if either norm is } 0) \\
        w_t &= w_{t-1} - \eta\, \phi_t\, r_t

    Norms are L2 norms over the whole parameter (one "layer"). :math:`\phi` is not
    clipped.

    Parameters
    ----------
    params : iterable of Parameter
    lr : float, default 1e-3
        Learning rate :math:`\eta` (>= 0).
    betas : (float, float), default (0.9, 0.999)
        Moment decay rates, each in [0, 1).
    eps : float, default 1e-6
        Added to :math:`\sqrt{\hat v}` (>= 0).
    weight_decay : float, default 0.01
        Decoupled decay :math:`\lambda` (>= 0), added to the update direction :math:`r`
        (so it is scaled by the trust ratio too).
    exclude_1d : bool, default True
        One-dimensional parameters (biases, batch-norm scale and shift) get neither weight
        decay nor the trust ratio: their step is Adam's, :math:`w \mathrel{-}= \eta\, r`
        with :math:`\lambda = 0`. ``False`` treats them like every other parameter.
    l1, max_norm, clip_grad_norm : keyword-only
        The options every optimizer takes; see :class:`~dualnn.optim.Optimizer`.

    Notes
    -----
    Where peers differ (all put :math:`\epsilon` outside the square root, as here):

    - optax ``lamb``: same rule; the trust ratio applies to every parameter (a mask
      only limits weight decay), no clipping of :math:`\phi` or of the gradient.
    - timm ``Lamb``: clips the global gradient norm first (``max_grad_norm=1.0``), can
      clip :math:`\phi` at 1 (``trust_clip``), and adapts only parameters whose group has
      ``weight_decay != 0`` unless ``always_adapt`` (its parameter groups put 1-D
      parameters at zero decay, the same exclusion as ``exclude_1d`` here).
    - apex ``FusedLAMB``: also clips the global gradient norm (``max_grad_norm=1.0``) and,
      without ``use_nvlamb``, adapts only parameters with non-zero weight decay.
    - The paper scales :math:`\lVert w \rVert` by a clipping function
      :math:`\phi(\cdot)`; here it is the identity.

    State per parameter: ``exp_avg``, ``exp_avg_sq``, ``step``. The fused kernels keep the
    trust ratio on the device (no host read per step).
    """

    hyperparameter_names = ("lr", "betas", "eps", "weight_decay", "exclude_1d")
    state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                 exclude_1d=True, *, l1=0.0, max_norm=None, clip_grad_norm=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         exclude_1d=exclude_1d, l1=l1, max_norm=max_norm,
                         clip_grad_norm=clip_grad_norm)

    def check_hyperparameters(self, hyper):
        owner = type(self).__name__
        betas = hyper["betas"]
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) \
                or len(betas) != 2:
            raise ConfigurationError(
                f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
        betas = tuple(check_real(owner, f"betas[{i}]", b, low=0.0, high=1.0, high_open=True)
                      for i, b in enumerate(betas))
        return {
            "lr": check_real(owner, "lr", hyper["lr"], low=0.0),
            "betas": betas,
            "eps": check_real(owner, "eps", hyper["eps"], low=0.0),
            "weight_decay": check_real(owner, "weight_decay", hyper["weight_decay"], low=0.0),
            "exclude_1d": check_bool(owner, "exclude_1d", hyper["exclude_1d"]),
        }

    def update(self, p, grad, state):
        exp_avg = self.state_buffer(state, p, "exp_avg")
        exp_avg_sq = self.state_buffer(state, p, "exp_avg_sq")
        excluded = self.exclude_1d and len(p.shape) <= 1
        beta1, beta2 = self.betas
        p.backend.lamb_update(p.data, grad, exp_avg, exp_avg_sq, step=state["step"],
                              lr=self.lr, beta1=beta1, beta2=beta2, eps=self.eps,
                              weight_decay=0.0 if excluded else self.weight_decay,
                              adapt=not excluded)
