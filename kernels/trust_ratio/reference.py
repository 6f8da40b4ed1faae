"""Reference LARS and LAMB updates: pure functions over an Array API namespace ``xp``.

They return new arrays and never read a device value back to the host: the norms and the
trust ratio stay 0-d arrays of the parameter's dtype.
"""

from __future__ import annotations

from ..optim.reference import _pow, _skip, _step_number, _typed


def l2_norm(xp, a):
    """``sqrt(sum(a * a))`` over every element, as a 0-d array of ``a``'s dtype."""
    return xp.sqrt(xp.sum(a * a))


def safe_ratio(xp, numerator, denominator, w_norm, u_norm):
    """``numerator / denominator``, or 1 where ``w_norm`` or ``u_norm`` is 0 (0-d arrays)."""
    ok = (w_norm > 0) & (u_norm > 0)
    one = xp.ones_like(numerator)
    return xp.where(ok, numerator / xp.where(ok, denominator, one), one)


def _bias_corrections(xp, step, skipped, beta1, beta2, like):
    """``(1 - beta1^t, 1 - beta2^t)`` with ``t = step - skipped[0]``: Python floats without
    ``skipped``, else 0-d arrays of ``like``'s dtype (computed in float64)."""
    t = _step_number(xp, step, skipped)
    if isinstance(t, int):
        return 1 - beta1 ** t, 1 - beta2 ** t
    return (_typed(xp, 1 - _pow(xp, beta1, t), like), _typed(xp, 1 - _pow(xp, beta2, t), like))


def _unscaled(xp, grad, inv_scale):
    """``grad * inv_scale``: a Python float or an array (1,) / 0-d; ``grad`` without it."""
    if inv_scale is None:
        return grad
    if isinstance(inv_scale, (int, float)):
        return grad * float(inv_scale)
    return grad * xp.astype(xp.reshape(inv_scale, ()), grad.dtype)


def lamb_direction(xp, param, exp_avg, exp_avg_sq, *, step, beta1, beta2, eps, weight_decay,
                   skipped=None):
    """LAMB's unscaled update ``r = m_hat / (sqrt(v_hat) + eps) + weight_decay * w``.

    ``exp_avg``/``exp_avg_sq`` are the moments already updated with this step's gradient;
    the bias corrections use ``t = step - skipped[0]`` (``skipped``: int32 array (1,)).
    """
    bias_correction1, bias_correction2 = _bias_corrections(xp, step, skipped, beta1, beta2,
                                                           param)
    m_hat = exp_avg / bias_correction1
    v_hat = exp_avg_sq / bias_correction2
    r = m_hat / (xp.sqrt(v_hat) + eps)
    if weight_decay != 0:
        r = r + weight_decay * param
    return r


def lamb_update(xp, param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1=0.9, beta2=0.999,
                eps=1e-6, weight_decay=0.0, adapt=True, inv_scale=None, found_inf=None,
                skipped=None):
    """One LAMB step (You et al. 2020), returning ``(param, exp_avg, exp_avg_sq)``.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``r = m/(1 - b1^t) / (sqrt(v/(1 - b2^t)) + eps) + weight_decay w``,
    ``w -= lr * phi * r`` with ``phi = ||w|| / ||r||`` (not clipped), ``phi = 1`` where
    either norm is 0 or when ``adapt`` is false.

    Parameters
    ----------
    param, grad, exp_avg, exp_avg_sq : array, any shape (all the same)
    step : int
        This update's number, from 1.
    lr, beta1, beta2, eps, weight_decay : float
    adapt : bool
        Apply the trust ratio (False: plain Adam with decoupled-in-``r`` weight decay).
    inv_scale : array (1,) of ``param``'s dtype, or float, optional
        A loss scaler's ``1 / scale``: the gradient used (moments, ``r``, the trust ratio)
        is ``grad * inv_scale``.
    found_inf : int32 array (1,), optional
        A loss scaler's overflow flag: when set, everything is returned unchanged.
    skipped : int32 array (1,), optional
        Steps skipped before this one: the bias corrections use ``t = step - skipped[0]``.
    """
    old = (param, exp_avg, exp_avg_sq)
    grad = _unscaled(xp, grad, inv_scale)
    m = beta1 * exp_avg + (1 - beta1) * grad
    v = beta2 * exp_avg_sq + (1 - beta2) * (grad * grad)
    r = lamb_direction(xp, param, m, v, step=step, beta1=beta1, beta2=beta2, eps=eps,
                       weight_decay=weight_decay, skipped=skipped)
    if adapt:
        w_norm = l2_norm(xp, param)
        r_norm = l2_norm(xp, r)
        phi = safe_ratio(xp, w_norm, r_norm, w_norm, r_norm)
        return _skip(xp, found_inf, old, (param - lr * (phi * r), m, v))
    return _skip(xp, found_inf, old, (param - lr * r, m, v))


def lars_local_lr(xp, param, grad, *, weight_decay, trust_coefficient, eps):
    """LARS's local rate ``eta ||w|| / (||g|| + weight_decay ||w|| + eps)`` (0-d array).

    1 where ``||w||`` or ``||g||`` is 0.
    """
    w_norm = l2_norm(xp, param)
    g_norm = l2_norm(xp, grad)
    return safe_ratio(xp, trust_coefficient * w_norm, g_norm + weight_decay * w_norm + eps,
                      w_norm, g_norm)


def lars_update(xp, param, grad, momentum_buffer, *, lr, momentum=0.9, weight_decay=0.0,
                trust_coefficient=0.001, eps=1e-8, adapt=True, found_inf=None):
    """One LARS step (You et al. 2017), returning ``(param, momentum_buffer)``.

    ``d = local * (g + weight_decay w)``, ``b = momentum b + d``, ``w -= lr b``, with
    ``local`` from :func:`lars_local_lr` (1 when ``adapt`` is false). The buffer starts
    at zeros, so the first step's buffer is ``d`` (PyTorch SGD's convention).

    Parameters
    ----------
    param, grad, momentum_buffer : array, any shape (all the same)
    lr, momentum, weight_decay, trust_coefficient, eps : float
    adapt : bool
        Apply the local rate (False: momentum SGD with L2 weight decay).
    found_inf : int32 array (1,), optional
        A loss scaler's overflow flag: when set, both are returned unchanged.
    """
    d = grad + weight_decay * param if weight_decay != 0 else grad
    if adapt:
        local = lars_local_lr(xp, param, grad, weight_decay=weight_decay,
                              trust_coefficient=trust_coefficient, eps=eps)
        d = local * d
    b = momentum * momentum_buffer + d
    return _kept(xp, found_inf, (param, momentum_buffer), (param - lr * b, b))


def _kept(xp, found_inf, old, new):
    """``new``, or ``old`` where the flag ``found_inf`` (array (1,)) is set."""
    if found_inf is None:
        return new
    found = xp.reshape(found_inf, (-1,))[0] != 0
    return tuple(xp.where(found, o, n) for o, n in zip(old, new))


# ------------------------------------------------------------ segmented (flat buffers)

def _segments(offsets, adapt):
    """``[(lo, hi, adapt), ...]`` from ``offsets`` (n + 1 ints) and ``adapt`` (n flags)."""
    offsets = [int(o) for o in offsets]
    adapt = [bool(a) for a in adapt]
    if len(offsets) != len(adapt) + 1:
        raise ValueError(f"segments: {len(offsets)} offsets for {len(adapt)} flags; expected "
                         "one offset more than flags")
    return [(offsets[k], offsets[k + 1], adapt[k]) for k in range(len(adapt))]


def nonfinite_flag(xp, grad, found_inf=None):
    """0-d bool array: ``grad`` holds NaN/inf, or ``found_inf`` (0-d or 1-element) is set."""
    bad = xp.logical_not(xp.all(xp.isfinite(grad)))
    if found_inf is not None:
        bad = xp.logical_or(bad, xp.reshape(found_inf, (-1,))[0] != 0)
    return bad


def lamb_update_segmented(xp, param, grad, exp_avg, exp_avg_sq, *, offsets, adapt, step, lr,
                          beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0, inv_scale=None,
                          found_inf=None, skipped=None):
    """LAMB over flat buffers holding several parameters, one trust ratio per segment.

    Segment ``k`` is ``[offsets[k], offsets[k + 1])``; it gets :func:`lamb_update` with
    ``weight_decay`` and the trust ratio when ``adapt[k]``, with neither otherwise (the
    optimizers' ``exclude_1d``).

    Parameters
    ----------
    param, grad, exp_avg, exp_avg_sq : array (total,)
    offsets : sequence of int (n + 1,)
        Increasing, from 0 to ``total``.
    adapt : sequence of bool (n,)
    inv_scale : array (1,) of ``param``'s dtype, or float, optional
        A loss scaler's ``1 / scale``: the gradient used is ``grad * inv_scale``.
    found_inf : array (1,) or 0-d, optional
        With ``inv_scale`` or alone: the step is skipped (everything returned unchanged)
        when it is set on entry or when ``grad * inv_scale`` holds NaN or inf.
    skipped : int32 array (1,), optional
        Steps skipped before this one: the bias corrections use ``t = step - skipped[0]``.

    Returns
    -------
    param, exp_avg, exp_avg_sq : array (total,)
    found : 0-d bool array or None
        Whether the step was skipped (``None`` without ``found_inf``).
    """
    grad = _unscaled(xp, grad, inv_scale)
    ps, ms, vs = [], [], []
    for lo, hi, on in _segments(offsets, adapt):
        p, m, v = lamb_update(xp, param[lo:hi], grad[lo:hi], exp_avg[lo:hi],
                              exp_avg_sq[lo:hi], step=step, lr=lr, beta1=beta1, beta2=beta2,
                              eps=eps, weight_decay=weight_decay if on else 0.0, adapt=on,
                              skipped=skipped)
        ps.append(p)
        ms.append(m)
        vs.append(v)
    new = [xp.concat(parts) if parts else old
           for parts, old in ((ps, param), (ms, exp_avg), (vs, exp_avg_sq))]
    if found_inf is None:
        return (*new, None)
    found = nonfinite_flag(xp, grad, found_inf)
    kept = [xp.where(found, old, a) for old, a in zip((param, exp_avg, exp_avg_sq), new)]
    return (*kept, found)


def lars_update_segmented(xp, param, grad, momentum_buffer, *, offsets, adapt, lr,
                          momentum=0.9, weight_decay=0.0, trust_coefficient=0.001, eps=1e-8,
                          found_inf=None):
    """LARS over flat buffers holding several parameters, one local rate per segment.

    Segment ``k`` (``[offsets[k], offsets[k + 1])``) gets :func:`lars_update` with
    ``weight_decay`` and the local rate when ``adapt[k]``, plain momentum SGD otherwise.

    Parameters
    ----------
    param, grad, momentum_buffer : array (total,)
    offsets : sequence of int (n + 1,)
    adapt : sequence of bool (n,)
    found_inf : int32 array (1,), optional
        A loss scaler's overflow flag: when set, both are returned unchanged.

    Returns
    -------
    param, momentum_buffer : array (total,)
    """
    ps, bs = [], []
    for lo, hi, on in _segments(offsets, adapt):
        p, b = lars_update(xp, param[lo:hi], grad[lo:hi], momentum_buffer[lo:hi], lr=lr,
                           momentum=momentum, weight_decay=weight_decay if on else 0.0,
                           trust_coefficient=trust_coefficient, eps=eps, adapt=on)
        ps.append(p)
        bs.append(b)
    return _kept(xp, found_inf, (param, momentum_buffer),
                 (xp.concat(ps) if ps else param, xp.concat(bs) if bs else momentum_buffer))
