"""Optimizer hooks: small steps an optimizer runs before or after its update rule.

The documented options are hooks: ``clip_grad_norm=`` installs :class:`GradientClipping`,
``l1=`` installs :class:`L1Penalty`, ``max_norm=`` installs :class:`MaxNorm`. Any other
hook is added with :meth:`Optimizer.add_hook <dualnn.optim.Optimizer.add_hook>`:

>>> opt = dn.optim.SGD(model.parameters(), lr=0.1)                # doctest: +SKIP
>>> opt.add_hook(dn.optim.hooks.MaxNorm(3.0))                     # doctest: +SKIP

Each hook works through the parameters' backends, never through an array library.
"""

from __future__ import annotations

from ..parameter import FlatArrays
from . import constraints
from .hyperparameters import check_real


class OptimizerHook:
    """Base class of optimizer hooks; both methods default to doing nothing.

    A hook must not modify ``p.grad``: :meth:`before_update` returns new gradient arrays
    instead.
    """

    def before_update(self, optimizer, grads):
        """The gradients the update should use.

        Parameters
        ----------
        optimizer : Optimizer
        grads : list of arrays
            One per ``optimizer.params``, same order and shapes (``p.grad`` or what an
            earlier hook returned).

        Returns
        -------
        list of arrays
        """
        return grads

    def after_update(self, optimizer):
        """Act on ``optimizer.params`` after every parameter was updated."""

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class GradientClipping(OptimizerHook):
    """Scale all gradients together so their global L2 norm is at most ``max_norm``.

    The factor is ``min(1, max_norm / (||g||_2 + 1e-6))`` with ``||g||_2`` the norm of all
    gradients together, as :func:`torch.nn.utils.clip_grad_norm_`. On the CPU the norm is
    read once per step (unclipped gradients are then used as they are); on a GPU the
    factor never leaves the device: every gradient is multiplied by it (exactly 1 when
    within the bound) into buffers reused from step to step, so clipping costs no host
    read and no allocation. Installed by the ``clip_grad_norm=`` option.
    """

    option = "clip_grad_norm"

    def __init__(self, max_norm):
        self.value = check_real(type(self).__name__, "max_norm", max_norm, low=0.0,
                                low_open=True)
        self._buffers = None

    def before_update(self, optimizer, grads):
        params = optimizer.params
        backend = params[0].backend
        if backend.device == "cpu" or any(p.backend is not backend for p in params):
            coef = constraints.clip_coefficient(
                constraints.global_grad_norm(params, grads), self.value)
            return [g * coef for g in grads] if coef < 1.0 else grads
        factor, clipped = self._device_buffers(backend, grads)
        flat = getattr(grads, "flat", None)
        if flat is not None:  # packed parameters: one reduction and one scaling pass
            constraints.clip_factor_on_device(backend, [flat], self.value, factor)
            backend.scale_into(flat, factor, clipped.flat)
            return clipped
        constraints.clip_factor_on_device(backend, grads, self.value, factor)
        return [backend.scale_into(g, factor, out) for g, out in zip(grads, clipped)]

    def _device_buffers(self, backend, grads):
        """The 0-d factor and one output per gradient (views of one flat buffer when the
        gradients are), kept while shapes and device hold."""
        _, factor, clipped = self._buffers = _like(self._buffers, backend, grads, factor=True)
        return factor, clipped

    def __repr__(self):
        return f"{type(self).__name__}(value={self.value!r})"


def _like(buffers, backend, grads, factor=False):
    """``(layout, factor, outputs)`` shaped like ``grads``, reused while the layout holds.

    The outputs are views of one flat buffer (a :class:`~dualnn.parameter.FlatArrays`)
    when ``grads`` are, so the optimizer's update stays one launch.
    """
    flat = getattr(grads, "flat", None)
    layout = (backend, flat is not None,
              tuple((tuple(g.shape), str(g.dtype)) for g in grads))
    if buffers is not None and buffers[0] == layout:
        return buffers
    dtype = "float64" if any(str(g.dtype) == "float64" for g in grads) else "float32"
    scale = backend.zeros((), dtype) if factor else None
    if flat is not None:
        whole = backend.zeros_like(flat)
        views, start = [], 0
        for g in grads:
            size = 1
            for n in g.shape:
                size *= n
            views.append(whole[start:start + size].reshape(tuple(g.shape)))
            start += size
        outputs = FlatArrays(views, whole)
    else:
        outputs = [backend.zeros_like(g) for g in grads]
    return layout, scale, outputs


class L1Penalty(OptimizerHook):
    """Add ``l1 * sign(p)`` (the gradient of ``l1 * sum(|p|)``) to each gradient.

    Installed by the ``l1=`` option.
    """

    option = "l1"

    def __init__(self, l1):
        self.value = check_real(type(self).__name__, "l1", l1, low=0.0)
        self._buffers = None

    def before_update(self, optimizer, grads):
        if self.value == 0:
            return grads
        params = optimizer.params
        backend = params[0].backend
        if backend.device == "cpu" or any(p.backend is not backend for p in params):
            return [constraints.add_l1(p, g, self.value) for p, g in zip(params, grads)]
        # on a GPU: written into buffers kept from step to step (no allocation)
        self._buffers = _like(self._buffers, backend, grads)
        out = self._buffers[2]
        flat = getattr(grads, "flat", None)
        if flat is not None and optimizer.__dict__.get("_flat") is not None:
            backend.add_l1_into(flat, optimizer._flat.data, self.value, out.flat)
            return out
        return [backend.add_l1_into(g, p.data, self.value, o)
                for p, g, o in zip(params, grads, out)]

    def __repr__(self):
        return f"{type(self).__name__}(value={self.value!r})"


class MaxNorm(OptimizerHook):
    """After the update, rescale every row of each parameter with two or more dimensions
    (for a ``Linear`` weight, an output unit's incoming weights) to an L2 norm of at
    most ``max_norm``; one-dimensional parameters are untouched.

    Installed by the ``max_norm=`` option.
    """

    option = "max_norm"

    def __init__(self, max_norm):
        self.value = check_real(type(self).__name__, "max_norm", max_norm, low=0.0,
                                low_open=True)

    def after_update(self, optimizer):
        for p in optimizer.params:
            constraints.apply_max_norm(p, self.value)


OPTION_HOOKS = {"clip_grad_norm": GradientClipping, "l1": L1Penalty, "max_norm": MaxNorm}
"""The constructor options and the hook each installs, in the order they run."""

OPTION_OFF = {"clip_grad_norm": None, "l1": 0.0, "max_norm": None}
"""Each option's default value, which installs no hook."""

__all__ = ["GradientClipping", "L1Penalty", "MaxNorm", "OptimizerHook"]
