"""LAMB: Adam moments with a layer-wise trust ratio (You et al., 2020)."""

from __future__ import annotations

from .base import Optimizer
from .hyperparameters import Hyperparameters, flag, real, real_pair
from .lars import segments


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
    trust ratio on the device (no host read per step). Under a
    :class:`~dualnn.precision.LossScaler` the kernels unscale the gradients (before weight
    decay and the trust ratio), skip on the device overflow flag and take the bias
    corrections at ``step - skipped`` (no host read either). On the GPU backend, whose
    parameters live in flat buffers, one segmented step updates every parameter in three
    kernel launches whatever their number (:meth:`flat_update`), with the same results.
    """

    hyperparameters = Hyperparameters(
        lr=real(1e-3, low=0.0),
        betas=real_pair((0.9, 0.999), low=0.0, high=1.0, high_open=True),
        eps=real(1e-6, low=0.0),
        weight_decay=real(0.01, low=0.0),
        exclude_1d=flag(True))
    state_keys = ("exp_avg", "exp_avg_sq")
    segmented_update = True
    scaled_update = True

    def update(self, p, grad, state):
        exp_avg = self.state_buffer(state, p, "exp_avg")
        exp_avg_sq = self.state_buffer(state, p, "exp_avg_sq")
        excluded = self.exclude_1d and len(p.shape) <= 1
        beta1, beta2 = self.betas
        p.backend.lamb_update(p.data, grad, exp_avg, exp_avg_sq, step=state["step"],
                              lr=self.lr, beta1=beta1, beta2=beta2, eps=self.eps,
                              weight_decay=0.0 if excluded else self.weight_decay,
                              adapt=not excluded, **self.scaling_args())

    def flat_update(self, flat, grad, state):
        """All parameters in one segmented step over the flat buffers (GPU backend): the
        same rule per parameter as :meth:`update`, in a fixed number of launches."""
        whole = flat.as_parameter()
        exp_avg = self.state_buffer(state, whole, "exp_avg")
        exp_avg_sq = self.state_buffer(state, whole, "exp_avg_sq")
        offsets, adapt = segments(flat, self.exclude_1d)
        beta1, beta2 = self.betas
        flat.backend.lamb_update_segmented(
            flat.data, grad, exp_avg, exp_avg_sq, offsets=offsets, adapt=adapt,
            step=state["step"], lr=self.lr, beta1=beta1, beta2=beta2, eps=self.eps,
            weight_decay=self.weight_decay, **self.scaling_args())
