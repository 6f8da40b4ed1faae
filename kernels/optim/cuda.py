"""The optimizer updates as Numba-CUDA kernels and their launchers.

Each update is one in-place grid-stride pass over the flattened parameter and its state.
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
    numba_cuda,
    require_array,
    stream_for,
)

cuda = None
"""``numba.cuda`` once the kernels are made. A module global (not a closure variable)
because the kernels name it and the simulator swaps that global for its own."""


SIGNATURES = {
    "sgd_update": ("void({f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f}, {f}, int32, int32, int32, "
                   "int32)"),
    "adam_update": ("void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f}, {f}, {f}, {f}, "
                    "{f}, {f}, {f}, int32)"),
    "rmsprop_update": ("void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f}, "
                       "{f}, {f}, {f}, int32, int32, int32)"),
    "adagrad_update": "void({f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f}, int32)",
    "adadelta_update": ("void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f}, {f}, {f}, "
                        "int32)"),
}
"""Explicit signature of each kernel below; ``{f}`` is the float dtype, ``{i}`` the label
dtype."""


def _make_kernels(dtype_name):
    """The Python functions of this family's kernels for one float dtype."""
    global cuda
    cuda = numba_cuda()
    cast, zero, one, nan = dtype_constants(dtype_name)

    def sgd_update(param, grad, buf, lr, momentum, undamped, weight_decay, use_decay,
                   use_momentum, nesterov, first_step):
        """SGD step in place; ``undamped = 1 - dampening``."""
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, param.shape[0], stride):
            p = param[i]
            g = grad[i]
            if use_decay:
                g = g + weight_decay * p
            if use_momentum:
                if first_step:
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
                    one_minus_beta2, step_size, bias_correction2_sqrt, eps, weight_decay,
                    decay_factor, decay_mode):
        """Adam (``decay_mode`` 1: L2 in the gradient) / AdamW (2: ``p *= decay_factor``)."""
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, param.shape[0], stride):
            p = param[i]
            g = grad[i]
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
                       eps, weight_decay, momentum, use_decay, centered, use_momentum):
        """RMSprop step in place (optional momentum and centering)."""
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, param.shape[0], stride):
            p = param[i]
            g = grad[i]
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

    def adagrad_update(param, grad, state_sum, clr, eps, weight_decay, use_decay):
        """Adagrad step in place; ``clr = lr / (1 + (t - 1) lr_decay)``."""
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, param.shape[0], stride):
            p = param[i]
            g = grad[i]
            if use_decay:
                g = g + weight_decay * p
            s = state_sum[i] + g * g
            state_sum[i] = s
            param[i] = p - clr * (g / (math.sqrt(s) + eps))

    def adadelta_update(param, grad, square_avg, acc_delta, lr, rho, one_minus_rho, eps,
                        weight_decay, use_decay):
        """Adadelta step in place."""
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, param.shape[0], stride):
            p = param[i]
            g = grad[i]
            if use_decay:
                g = g + weight_decay * p
            v = rho * square_avg[i] + one_minus_rho * (g * g)
            square_avg[i] = v
            u = acc_delta[i]
            delta = math.sqrt(u + eps) / math.sqrt(v + eps) * g
            acc_delta[i] = rho * u + one_minus_rho * (delta * delta)
            param[i] = p - lr * delta

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


def sgd_update(param, grad, momentum_buffer, *, lr, momentum=0.0, dampening=0.0,
               nesterov=False, weight_decay=0.0, first_step=False):
    """In-place SGD step; see :func:`dualnn.kernels.reference.sgd_update`."""
    state = {"grad": grad}
    if momentum != 0:
        if momentum_buffer is None:
            raise ValueError("sgd_update: momentum != 0 needs a momentum_buffer")
        state["momentum_buffer"] = momentum_buffer
    dtype, size = _optimizer_arrays("sgd_update", param, **state)
    if size:
        pf = flat(param)
        buf = flat(momentum_buffer) if momentum != 0 else pf
        blocks, threads = grid_stride(size)
        KERNELS.compiled("sgd_update", dtype)[blocks, threads, stream_for(param)](
            pf, flat(grad), buf, lr, momentum, 1.0 - dampening, weight_decay,
            int(weight_decay != 0), int(momentum != 0), int(bool(nesterov)),
            int(bool(first_step)))


def adam_update(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1=0.9, beta2=0.999,
                eps=1e-8, weight_decay=0.0, decoupled=False):
    """In-place Adam/AdamW step; see :func:`dualnn.kernels.reference.adam_update`."""
    dtype, size = _optimizer_arrays("adam_update", param, grad=grad, exp_avg=exp_avg,
                                    exp_avg_sq=exp_avg_sq)
    if size:
        mode = 0 if weight_decay == 0 else (2 if decoupled else 1)
        step_size = lr / (1 - beta1 ** step)
        bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
        blocks, threads = grid_stride(size)
        KERNELS.compiled("adam_update", dtype)[blocks, threads, stream_for(param)](
            flat(param), flat(grad), flat(exp_avg), flat(exp_avg_sq), beta1, 1.0 - beta1,
            beta2, 1.0 - beta2, step_size, bias_correction2_sqrt, eps, weight_decay,
            1.0 - lr * weight_decay, mode)


def rmsprop_update(param, grad, square_avg, momentum_buffer, grad_avg, *, lr, alpha=0.99,
                   eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
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
    if size:
        pf = flat(param)
        blocks, threads = grid_stride(size)
        KERNELS.compiled("rmsprop_update", dtype)[blocks, threads, stream_for(param)](
            pf, flat(grad), flat(square_avg),
            flat(momentum_buffer) if momentum > 0 else pf,
            flat(grad_avg) if centered else pf,
            lr, alpha, 1.0 - alpha, eps, weight_decay, momentum, int(weight_decay != 0),
            int(bool(centered)), int(momentum > 0))


def adagrad_update(param, grad, state_sum, *, step, lr, lr_decay=0.0, weight_decay=0.0,
                   eps=1e-10):
    """In-place Adagrad step; see :func:`dualnn.kernels.reference.adagrad_update`."""
    dtype, size = _optimizer_arrays("adagrad_update", param, grad=grad, state_sum=state_sum)
    if size:
        clr = lr / (1 + (step - 1) * lr_decay)
        blocks, threads = grid_stride(size)
        KERNELS.compiled("adagrad_update", dtype)[blocks, threads, stream_for(param)](
            flat(param), flat(grad), flat(state_sum), clr, eps, weight_decay,
            int(weight_decay != 0))


def adadelta_update(param, grad, square_avg, acc_delta, *, lr=1.0, rho=0.9, eps=1e-6,
                    weight_decay=0.0):
    """In-place Adadelta step; see :func:`dualnn.kernels.reference.adadelta_update`."""
    dtype, size = _optimizer_arrays("adadelta_update", param, grad=grad,
                                    square_avg=square_avg, acc_delta=acc_delta)
    if size:
        blocks, threads = grid_stride(size)
        KERNELS.compiled("adadelta_update", dtype)[blocks, threads, stream_for(param)](
            flat(param), flat(grad), flat(square_avg), flat(acc_delta), lr, rho,
            1.0 - rho, eps, weight_decay, int(weight_decay != 0))

