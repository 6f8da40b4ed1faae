"""LARS: momentum SGD with a layer-wise local learning rate (You et al., 2017)."""

from __future__ import annotations

import inspect

from .base import Optimizer
from .hyperparameters import Hyperparameter, Hyperparameters, check_real, flag, real


def _required_real(**bounds):
    """A real hyperparameter without a default: leaving it out raises ``TypeError``."""
    def check(owner, name, value):
        if value is inspect.Parameter.empty:
            raise TypeError(f"{owner}() missing required hyperparameter {name!r} (it has no "
                            "default)")
        return check_real(owner, name, value, **bounds)
    return Hyperparameter(inspect.Parameter.empty, check)


class LARS(Optimizer):
    r"""LARS, layer-wise adaptive rate scaling for large-batch SGD.

    For each parameter :math:`w` with gradient :math:`g_t`, weight decay :math:`\lambda`,
    trust coefficient :math:`\eta_{tc}`, momentum :math:`\mu` and learning rate
    :math:`\eta`:

    .. math::

        \ell_t &= \frac{\eta_{tc} \lVert w_{t-1} \rVert}
                       {\lVert g_t \rVert + \lambda \lVert w_{t-1} \rVert + \epsilon}
                  \quad (1 \text{ if } \lVert w \rVert = 0 \text{ or } \lVert g \rVert = 0) \\
        b_t &= \mu\, b_{t-1} + \ell_t\, (g_t + \lambda w_{t-1}), \qquad b_0 = 0 \\
        w_t &= w_{t-1} - \eta\, b_t

    This is the torch-style form of :class:`~dualnn.optim.SGD` (learning rate outside the
    momentum buffer, the first buffer equal to the first scaled gradient). With a constant
    learning rate it is the same trajectory as the paper's
    :math:`v \leftarrow \mu v + \eta\, \ell (g + \lambda w)`, :math:`w \leftarrow w - v`
    (:math:`v = \eta b`); when a schedule changes :math:`\eta`, the new rate applies to
    the whole buffer at once.

    Parameters
    ----------
    params : iterable of Parameter
    lr : float
        Global learning rate :math:`\eta` (>= 0). With the default trust coefficient the
        local rate is ~1e-3 of ``lr``, so LARS rates are much larger than SGD's.
    momentum : float, default 0.9
        Momentum :math:`\mu` (>= 0).
    weight_decay : float, default 0
        L2 penalty :math:`\lambda` (>= 0), added to the gradient and to the local rate's
        denominator.
    trust_coefficient : float, default 0.001
        :math:`\eta_{tc}` (> 0).
    eps : float, default 1e-8
        Added to the local rate's denominator (>= 0).
    exclude_1d : bool, default True
        One-dimensional parameters (biases, batch-norm scale and shift) get neither weight
        decay nor the local rate (plain momentum SGD); ``False`` treats them like the rest.
    l1, max_norm, clip_grad_norm : keyword-only
        The options every optimizer takes; see :class:`~dualnn.optim.Optimizer`.

    Notes
    -----
    Where peers differ:

    - timm ``Lars``: the same local rate and the same zero-norm rule; ``trust_clip``
      (LARC) clips it to ``min(local / lr, 1)``; it adapts only groups with
      ``weight_decay != 0`` unless ``always_adapt``. apex's ``LARC`` wrapper computes the
      same rate (optionally clipped) around a torch optimizer.
    - optax ``lars``: adds the decay first and divides by the norm of the decayed update,
      :math:`\eta_{tc} \lVert w \rVert / (\lVert g + \lambda w \rVert + \epsilon)`
      (default :math:`\epsilon = 0`), scales by the learning rate before the momentum
      trace, and masks 1-D parameters only through ``weight_decay_mask`` /
      ``trust_ratio_mask``.

    State per parameter: ``momentum_buffer``, ``step``. The fused kernels keep the local
    rate on the device (no host read per step on a GPU). On the GPU backend, whose
    parameters live in flat buffers, one segmented step updates every parameter in three
    kernel launches whatever their number (:meth:`flat_update`), with the same results.
    """

    hyperparameters = Hyperparameters(
        lr=_required_real(low=0.0),
        momentum=real(0.9, low=0.0),
        weight_decay=real(0.0, low=0.0),
        trust_coefficient=real(0.001, low=0.0, low_open=True),
        eps=real(1e-8, low=0.0),
        exclude_1d=flag(True))
    state_keys = ("momentum_buffer",)
    segmented_update = True
    scaled_update = True
    unscales_in_kernel = False  # the kernels skip on the flag; the scaler unscales first

    def _flag(self):
        scaling = self.scaling_args()
        return {"found_inf": scaling["found_inf"]} if scaling else {}

    def update(self, p, grad, state):
        buffer = self.state_buffer(state, p, "momentum_buffer")
        excluded = self.exclude_1d and len(p.shape) <= 1
        p.backend.lars_update(p.data, grad, buffer, lr=self.lr, momentum=self.momentum,
                              weight_decay=0.0 if excluded else self.weight_decay,
                              trust_coefficient=self.trust_coefficient, eps=self.eps,
                              adapt=not excluded, **self._flag())

    def flat_update(self, flat, grad, state):
        """All parameters in one segmented step over the flat buffers (GPU backend): the
        same rule per parameter as :meth:`update`, in a fixed number of launches."""
        buffer = self.state_buffer(state, flat.as_parameter(), "momentum_buffer")
        offsets, adapt = segments(flat, self.exclude_1d)
        flat.backend.lars_update_segmented(
            flat.data, grad, buffer, offsets=offsets, adapt=adapt, lr=self.lr,
            momentum=self.momentum, weight_decay=self.weight_decay,
            trust_coefficient=self.trust_coefficient, eps=self.eps, **self._flag())


def segments(flat, exclude_1d):
    """``(offsets, adapt)`` of ``flat``'s parameters: segment bounds (n + 1 ints) and
    whether each gets the trust ratio and weight decay (not the 1-D ones when
    ``exclude_1d``)."""
    offsets = (0,) + tuple(hi for _, hi in flat.slices)
    adapt = tuple(not (exclude_1d and len(p.shape) <= 1) for p in flat.params)
    return offsets, adapt
