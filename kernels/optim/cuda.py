"""The optimizer updates as Numba-CUDA kernels and their launchers.

Each update is one in-place grid-stride pass over the flattened parameter and its state.

Loss scaling happens inside the update kernels: each takes ``inv_scale`` (the gradient
used is ``grad * inv_scale[0]``, before weight decay), ``found_inf`` (int32 (1,): when
set, every thread returns before writing anything) and ``skipped`` (int32 (1,): the step
number used for bias corrections is ``step - skipped[0]``), all device arrays, so a
skipped step needs no host read. :func:`grad_check_finite` sets ``found_inf`` in one
launch over a (flat) gradient and :func:`loss_scale_update` is ``GradScaler``'s scale
update on 1-element device arrays (one thread).
"""

from __future__ import annotations

import math

import numpy as np

from .._cuda import (
    KernelFamily,
    check,
    dtype_constants,
    flat,
    grid_stride,
    is_cupy,
    numba_cuda,
    require_array,
    stream_for,
)

cuda = None
"""``numba.cuda`` once the kernels are made. A module global (not a closure variable)
because the kernels name it and the simulator swaps that global for its own."""


_SCALING = "{f}[::1], int32[::1], int32[::1]"  # inv_scale, found_inf, skipped

SIGNATURES = {
    "sgd_update": ("void({f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f}, {f}, int32, int32, int32, "
                   "int32, int32, " + _SCALING + ")"),
    "adam_update": ("void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f}, {f}, {f}, {f}, "
                    "{f}, int32, {f}, {f}, {f}, int32, " + _SCALING + ")"),
    "rmsprop_update": ("void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f}, "
                       "{f}, {f}, {f}, int32, int32, int32, " + _SCALING + ")"),
    "adagrad_update": ("void({f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f}, int32, {f}, {f}, "
                       "int32, " + _SCALING + ")"),
    "adadelta_update": ("void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f}, {f}, {f}, "
                        "int32, " + _SCALING + ")"),
    "grad_check_finite": "void({f}[::1], {f}[::1], int32[::1], int32)",
    "loss_scale_update": "void({f}[::1], {f}[::1], int32[::1], int32[::1], {f}, {f}, int32)",
}
"""Explicit signature of each kernel below; ``{f}`` is the float dtype, ``{i}`` the label
dtype."""


def _make_kernels(dtype_name):
    """The Python functions of this family's kernels for one float dtype."""
    global cuda
    cuda = numba_cuda()
    cast, zero, one, nan = dtype_constants(dtype_name)

    def sgd_update(param, grad, buf, lr, momentum, undamped, weight_decay, use_decay,
                   use_momentum, nesterov, first_step, step, inv_scale, found, skipped):
        """SGD step in place; ``undamped = 1 - dampening``; with ``step > 0`` the first
        step is ``step - skipped[0] == 1`` (else ``first_step``)."""
        if found[0] != 0:
            return
        first = first_step != 0 or (step > 0 and step - skipped[0] == 1)
        scale = inv_scale[0]
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, param.shape[0], stride):
            p = param[i]
            g = grad[i] * scale
            if use_decay:
                g = g + weight_decay * p
            if use_momentum:
                if first:
                    b = g
                else:
                    b = momentum * buf[i] + undamped * g
                buf[i] = b
                if nesterov:
                    g = g + momentum * b
                else:
                    g = b
            param[i] = p - lr * g

    def adam_update(param, grad, exp_avg, exp_avg_sq, beta1, one_minus_beta1, beta2,
                    one_minus_beta2, host_step_size, host_bias_correction2_sqrt, lr, step,
                    eps, weight_decay, decay_factor, decay_mode, inv_scale, found, skipped):
        """Adam (``decay_mode`` 1: L2 in the gradient) / AdamW (2: ``p *= decay_factor``).

        The bias corrections are the host's (of ``step``, computed in float64) unless
        ``skipped[0]`` steps were skipped: then those of ``step - skipped[0]``, computed
        here in the kernel's dtype (within a few ulps of the host's).
        """
        if found[0] != 0:
            return
        step_size = host_step_size
        bias_correction2_sqrt = host_bias_correction2_sqrt
        if skipped[0] != 0:
            t = cast(step - skipped[0])
            step_size = lr / (one - beta1 ** t)
            bias_correction2_sqrt = math.sqrt(one - beta2 ** t)
        scale = inv_scale[0]
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, param.shape[0], stride):
            p = param[i]
            g = grad[i] * scale
            if decay_mode == 1:
                g = g + weight_decay * p
            elif decay_mode == 2:
                p = p * decay_factor
            m = beta1 * exp_avg[i] + one_minus_beta1 * g
            v = beta2 * exp_avg_sq[i] + one_minus_beta2 * (g * g)
            exp_avg[i] = m
            exp_avg_sq[i] = v
            denom = math.sqrt(v) / bias_correction2_sqrt + eps
            param[i] = p - step_size * (m / denom)

    def rmsprop_update(param, grad, square_avg, buf, grad_avg, lr, alpha, one_minus_alpha,
                       eps, weight_decay, momentum, use_decay, centered, use_momentum,
                       inv_scale, found, skipped):
        """RMSprop step in place (optional momentum and centering)."""
        if found[0] != 0:
            return
        scale = inv_scale[0]
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, param.shape[0], stride):
            p = param[i]
            g = grad[i] * scale
            if use_decay:
                g = g + weight_decay * p
            v = alpha * square_avg[i] + one_minus_alpha * (g * g)
            square_avg[i] = v
            if centered:
                ga = alpha * grad_avg[i] + one_minus_alpha * g
                grad_avg[i] = ga
                avg = math.sqrt(v - ga * ga) + eps
            else:
                avg = math.sqrt(v) + eps
            if use_momentum:
                b = momentum * buf[i] + g / avg
                buf[i] = b
                param[i] = p - lr * b
            else:
                param[i] = p - lr * (g / avg)

    def adagrad_update(param, grad, state_sum, host_clr, lr, lr_decay, step, eps,
                       weight_decay, use_decay, inv_scale, found, skipped):
        """Adagrad step in place; ``clr = lr / (1 + (t - 1) lr_decay)``: the host's for
        ``t = step``, else computed here for ``t = step - skipped[0]``."""
        if found[0] != 0:
            return
        clr = host_clr
        if skipped[0] != 0:
            clr = lr / (one + cast(step - skipped[0] - 1) * lr_decay)
        scale = inv_scale[0]
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, param.shape[0], stride):
            p = param[i]
            g = grad[i] * scale
            if use_decay:
                g = g + weight_decay * p
            s = state_sum[i] + g * g
            state_sum[i] = s
            param[i] = p - clr * (g / (math.sqrt(s) + eps))

    def adadelta_update(param, grad, square_avg, acc_delta, lr, rho, one_minus_rho, eps,
                        weight_decay, use_decay, inv_scale, found, skipped):
        """Adadelta step in place."""
        if found[0] != 0:
            return
        scale = inv_scale[0]
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, param.shape[0], stride):
            p = param[i]
            g = grad[i] * scale
            if use_decay:
                g = g + weight_decay * p
            v = rho * square_avg[i] + one_minus_rho * (g * g)
            square_avg[i] = v
            u = acc_delta[i]
            delta = math.sqrt(u + eps) / math.sqrt(v + eps) * g
            acc_delta[i] = rho * u + one_minus_rho * (delta * delta)
            param[i] = p - lr * delta

    def grad_check_finite(grad, inv_scale, found, write):
        """``found[0] = 1`` if ``grad`` holds NaN/inf; with ``write``, ``grad *= inv_scale[0]``."""
        scale = inv_scale[0]
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, grad.shape[0], stride):
            g = grad[i]
            if math.isinf(g) or math.isnan(g):
                found[0] = 1
            if write != 0:
                grad[i] = g * scale

    def loss_scale_update(scale, inv_scale, tracker, found, growth, backoff, interval):
        """``GradScaler``'s update (one thread): back off and reset the tracker after an
        overflow, else count a clean step and grow every ``interval``; then
        ``inv_scale = 1 / scale`` and ``found = 0``."""
        if cuda.grid(1) != 0:
            return
        if found[0] != 0:
            scale[0] = scale[0] * backoff
            tracker[0] = 0
        else:
            clean = tracker[0] + 1
            if clean == interval:
                scale[0] = scale[0] * growth
                clean = 0
            tracker[0] = clean
        inv_scale[0] = one / scale[0]
        found[0] = 0

    kernels = dict(locals())
    return {name: kernels[name] for name in SIGNATURES}


KERNELS = KernelFamily(_make_kernels, SIGNATURES)
"""This family's kernels: signatures, Python functions, compiled kernels."""


def _optimizer_arrays(name, param, **state):
    require_array(name, "param", param)
    arrays = {"param": (param, None)}
    arrays.update({label: (a, param.shape) for label, a in state.items()})
    dtype = check(name, arrays)
    return dtype, int(np.prod(param.shape, dtype=np.int64))


_NEUTRAL = {}


def _neutral(param, dtype, tag):
    """A cached (1,) array on ``param``'s device: ``inv_scale`` 1.0 or an int32 zero flag."""
    key = (type(param).__module__, str(getattr(param, "device", "")), dtype, tag)
    a = _NEUTRAL.get(key)
    if a is None:
        xp = np
        if is_cupy(param):
            import cupy as xp
        a = _NEUTRAL[key] = (xp.ones((1,), dtype=dtype) if tag == "scale"
                             else xp.zeros((1,), dtype=np.int32))
    return a


def _scaling(name, param, dtype, inv_scale, found_inf, skipped):
    """The three loss-scaling arrays of a launch (neutral ones for ``None``), checked."""
    arrays = []
    for label, a, kind in (("inv_scale", inv_scale, dtype), ("found_inf", found_inf, "int32"),
                           ("skipped", skipped, "int32")):
        if a is None:
            a = _neutral(param, kind, "scale" if label == "inv_scale" else "flag")
        require_array(name, label, a)
        if np.dtype(a.dtype).name != kind or tuple(a.shape) != (1,) \
                or is_cupy(a) != is_cupy(param):
            raise TypeError(f"{name}: {label} must be a {kind} array of shape (1,) of the "
                            f"parameter's library, got {type(a).__name__} "
                            f"{np.dtype(a.dtype).name} {tuple(a.shape)}")
        arrays.append(a)
    return arrays


def sgd_update(param, grad, momentum_buffer, *, lr, momentum=0.0, dampening=0.0,
               nesterov=False, weight_decay=0.0, first_step=False, step=None, inv_scale=None,
               found_inf=None, skipped=None):
    """In-place SGD step; see :func:`dualnn.kernels.reference.sgd_update` (and its
    module for ``inv_scale``, ``found_inf``, ``skipped``: device arrays (1,))."""
    state = {"grad": grad}
    if momentum != 0:
        if momentum_buffer is None:
            raise ValueError("sgd_update: momentum != 0 needs a momentum_buffer")
        state["momentum_buffer"] = momentum_buffer
    dtype, size = _optimizer_arrays("sgd_update", param, **state)
    scaling = _scaling("sgd_update", param, dtype, inv_scale, found_inf, skipped)
    by_step = skipped is not None and step is not None
    if size:
        pf = flat(param)
        buf = flat(momentum_buffer) if momentum != 0 else pf
        blocks, threads = grid_stride(size)
        KERNELS.compiled("sgd_update", dtype)[blocks, threads, stream_for(param)](
            pf, flat(grad), buf, lr, momentum, 1.0 - dampening, weight_decay,
            int(weight_decay != 0), int(momentum != 0), int(bool(nesterov)),
            0 if by_step else int(bool(first_step)), int(step) if by_step else 0, *scaling)


def adam_update(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1=0.9, beta2=0.999,
                eps=1e-8, weight_decay=0.0, decoupled=False, inv_scale=None, found_inf=None,
                skipped=None):
    """In-place Adam/AdamW step; see :func:`dualnn.kernels.reference.adam_update`."""
    dtype, size = _optimizer_arrays("adam_update", param, grad=grad, exp_avg=exp_avg,
                                    exp_avg_sq=exp_avg_sq)
    scaling = _scaling("adam_update", param, dtype, inv_scale, found_inf, skipped)
    if size:
        mode = 0 if weight_decay == 0 else (2 if decoupled else 1)
        blocks, threads = grid_stride(size)
        KERNELS.compiled("adam_update", dtype)[blocks, threads, stream_for(param)](
            flat(param), flat(grad), flat(exp_avg), flat(exp_avg_sq), beta1, 1.0 - beta1,
            beta2, 1.0 - beta2, lr / (1 - beta1 ** step), math.sqrt(1 - beta2 ** step), lr,
            int(step), eps, weight_decay, 1.0 - lr * weight_decay, mode, *scaling)


def rmsprop_update(param, grad, square_avg, momentum_buffer, grad_avg, *, lr, alpha=0.99,
                   eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, inv_scale=None,
                   found_inf=None, skipped=None):
    """In-place RMSprop step; see :func:`dualnn.kernels.reference.rmsprop_update`."""
    state = {"grad": grad, "square_avg": square_avg}
    if momentum > 0:
        if momentum_buffer is None:
            raise ValueError("rmsprop_update: momentum > 0 needs a momentum_buffer")
        state["momentum_buffer"] = momentum_buffer
    if centered:
        if grad_avg is None:
            raise ValueError("rmsprop_update: centered=True needs grad_avg")
        state["grad_avg"] = grad_avg
    dtype, size = _optimizer_arrays("rmsprop_update", param, **state)
    scaling = _scaling("rmsprop_update", param, dtype, inv_scale, found_inf, skipped)
    if size:
        pf = flat(param)
        blocks, threads = grid_stride(size)
        KERNELS.compiled("rmsprop_update", dtype)[blocks, threads, stream_for(param)](
            pf, flat(grad), flat(square_avg),
            flat(momentum_buffer) if momentum > 0 else pf,
            flat(grad_avg) if centered else pf,
            lr, alpha, 1.0 - alpha, eps, weight_decay, momentum, int(weight_decay != 0),
            int(bool(centered)), int(momentum > 0), *scaling)


def adagrad_update(param, grad, state_sum, *, step, lr, lr_decay=0.0, weight_decay=0.0,
                   eps=1e-10, inv_scale=None, found_inf=None, skipped=None):
    """In-place Adagrad step; see :func:`dualnn.kernels.reference.adagrad_update`."""
    dtype, size = _optimizer_arrays("adagrad_update", param, grad=grad, state_sum=state_sum)
    scaling = _scaling("adagrad_update", param, dtype, inv_scale, found_inf, skipped)
    if size:
        blocks, threads = grid_stride(size)
        KERNELS.compiled("adagrad_update", dtype)[blocks, threads, stream_for(param)](
            flat(param), flat(grad), flat(state_sum), lr / (1 + (step - 1) * lr_decay), lr,
            lr_decay, int(step), eps, weight_decay, int(weight_decay != 0), *scaling)


def adadelta_update(param, grad, square_avg, acc_delta, *, lr=1.0, rho=0.9, eps=1e-6,
                    weight_decay=0.0, inv_scale=None, found_inf=None, skipped=None):
    """In-place Adadelta step; see :func:`dualnn.kernels.reference.adadelta_update`."""
    dtype, size = _optimizer_arrays("adadelta_update", param, grad=grad,
                                    square_avg=square_avg, acc_delta=acc_delta)
    scaling = _scaling("adadelta_update", param, dtype, inv_scale, found_inf, skipped)
    if size:
        blocks, threads = grid_stride(size)
        KERNELS.compiled("adadelta_update", dtype)[blocks, threads, stream_for(param)](
            flat(param), flat(grad), flat(square_avg), flat(acc_delta), lr, rho,
            1.0 - rho, eps, weight_decay, int(weight_decay != 0), *scaling)


def grad_check_finite(grad, found_inf, inv_scale=None):
    """One launch over ``grad`` (any shape): ``found_inf[0] = 1`` if it holds NaN/inf.

    Parameters
    ----------
    grad : device array, any shape
    found_inf : int32 device array (1,)
        Set (never cleared) here.
    inv_scale : device array (1,) of ``grad``'s dtype, optional
        When given, ``grad`` is also unscaled in place (``grad *= inv_scale[0]``).
    """
    dtype, size = _optimizer_arrays("grad_check_finite", grad)
    scale, found, _ = _scaling("grad_check_finite", grad, dtype, inv_scale, found_inf, None)
    if size:
        blocks, threads = grid_stride(size)
        KERNELS.compiled("grad_check_finite", dtype)[blocks, threads, stream_for(grad)](
            flat(grad), scale, found, int(inv_scale is not None))


def loss_scale_update(scale, inv_scale, growth_tracker, found_inf, *, growth_factor,
                      backoff_factor, growth_interval):
    """``GradScaler``'s scale update on the device, one thread, in place.

    Parameters
    ----------
    scale, inv_scale : device arrays (1,), float32 or float64
        The scale (halved after an overflow, doubled every ``growth_interval`` clean
        steps) and ``1 / scale`` (rewritten).
    growth_tracker, found_inf : int32 device arrays (1,)
        Clean steps in a row (reset on an overflow and on growth); the step's overflow
        flag (read, then cleared).
    growth_factor, backoff_factor : float
    growth_interval : int
    """
    dtype, _ = _optimizer_arrays("loss_scale_update", scale, inv_scale=inv_scale)
    _, found, tracker = _scaling("loss_scale_update", scale, dtype, None, found_inf,
                                 growth_tracker)
    KERNELS.compiled("loss_scale_update", dtype)[1, 1, stream_for(scale)](
        scale, inv_scale, tracker, found, growth_factor, backoff_factor, int(growth_interval))
