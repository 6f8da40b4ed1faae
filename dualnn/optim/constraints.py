"""The documented optimizer options: L1 penalty, gradient-norm clipping, max-norm constraint.

Each function works through a parameter's backend (``p.backend.xp`` and the backend's
methods), never through an array library directly, so it runs unchanged on every device.
The hooks of :mod:`dualnn.optim.hooks` call them; an optimizer built with the options runs
them in this order:

1. ``clip_grad_norm``: every gradient is scaled by
   ``min(1, max_norm / (||g||_2 + 1e-6))``, where ``||g||_2`` is the norm of all
   gradients together (as :func:`torch.nn.utils.clip_grad_norm_`);
2. ``l1``: ``l1 * sign(p)`` is added to the (clipped) gradient;
3. the optimizer's update rule, with its own ``weight_decay``;
4. ``max_norm``: each row of a weight with two or more dimensions (for ``Linear``, an
   output unit's incoming weight vector) is rescaled so its L2 norm is at most
   ``max_norm``; one-dimensional parameters (biases, batch-norm scales) are untouched.

Steps 1 and 2 never modify ``p.grad``: they produce a new gradient array for the update.
"""

from __future__ import annotations

import math

CLIP_EPS = 1e-6
"""Added to the global norm before dividing, as in :func:`torch.nn.utils.clip_grad_norm_`."""


def global_grad_norm(params, grads=None):
    """L2 norm of all gradients together, as a Python float.

    ``sqrt(sum_p sum(g_p ** 2))``, summed on the device; one host read per backend.

    Parameters
    ----------
    params : sequence of Parameter
    grads : sequence of arrays, optional
        Gradients to measure instead of ``p.grad`` (same order as ``params``).

    Returns
    -------
    float
        ``nan`` or ``inf`` if some gradient is not finite.
    """
    if grads is None:
        grads = [p.grad for p in params]
    total = 0.0
    for backend, arrays in _by_backend(params, grads):
        out = backend.scratch("global_grad_norm", (), "float64")
        total += backend.item(backend.sum_of_squares(arrays, out))
    return math.sqrt(total)


def _by_backend(params, arrays):
    """``[(backend, [arrays of its parameters])]`` in first-seen order."""
    groups = {}
    for p, a in zip(params, arrays):
        groups.setdefault(id(p.backend), (p.backend, []))[1].append(a)
    return list(groups.values())


def clip_factor_on_device(backend, grads, max_norm, out):
    """``min(1, max_norm / (||g||_2 + 1e-6))`` of ``grads`` written into the 0-d ``out``.

    Nothing is read back to the host: the factor stays on the device and scales the
    gradients there (see :class:`~dualnn.optim.hooks.GradientClipping`).
    """
    backend.sum_of_squares(grads, out)
    return backend.clip_factor(out, float(max_norm), CLIP_EPS)


def clip_coefficient(total_norm, max_norm):
    """The factor ``min(1, max_norm / (total_norm + 1e-6))`` gradients are scaled by."""
    return min(1.0, max_norm / (total_norm + CLIP_EPS))


def clip_grad_norm_(params, max_norm):
    """Scale every ``p.grad`` in place so their global L2 norm is at most ``max_norm``.

    The in-place twin of the ``clip_grad_norm=`` optimizer option, for users who want to
    clip outside an optimizer (as :func:`torch.nn.utils.clip_grad_norm_`).

    Parameters
    ----------
    params : iterable of Parameter
    max_norm : float
        Positive bound on the norm of all gradients together.

    Returns
    -------
    float
        The global norm before clipping.
    """
    params = list(params)
    total = global_grad_norm(params)
    coef = clip_coefficient(total, float(max_norm))
    if coef < 1.0:
        for p in params:
            p.backend.assign(p.grad, p.grad * coef)
    return total


def add_l1(p, grad, l1):
    """``grad + l1 * sign(p)``: the gradient of ``l1 * sum(|p|)`` added to ``grad`` (new array)."""
    return grad + l1 * p.backend.xp.sign(p.data)


def apply_max_norm(p, max_norm):
    """Rescale each row of ``p.data`` in place to an L2 norm of at most ``max_norm``.

    A row is everything along the first axis: for a ``Linear`` weight of shape
    ``(out, in)`` it is one output unit's incoming weights. Rows already within the bound
    are left exactly as they are; longer rows are multiplied by ``max_norm / ||row||``.
    Parameters with fewer than two dimensions are not changed.
    """
    data = p.data
    if data.ndim < 2:
        return
    p.backend.max_norm_rows(data, float(max_norm))
