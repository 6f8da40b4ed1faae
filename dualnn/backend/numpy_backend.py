"""The CPU backend: NumPy arrays, fused Numba kernels where they apply."""

from __future__ import annotations

import os

import numpy as np

from ..errors import ShapeError
from ..kernels.reference import ACTIVATIONS
from .allocation import aligned_empty, aligned_zeros
from .base import ArrayAPIBackend


def fused_kernels_enabled():
    """Whether fused kernels are switched on (``DUALNN_FUSED=0`` switches them off)."""
    return os.environ.get("DUALNN_FUSED", "1").strip().lower() not in ("0", "false", "no", "off")


class NumpyBackend(ArrayAPIBackend):
    """NumPy on the CPU.

    Ops with a Numba kernel in :mod:`dualnn.kernels.cpu` run it for float32/float64
    C-contiguous arrays when ``fused`` is true; other cases run the reference math.

    Parameters
    ----------
    fused : bool, optional
        Use the fused kernels; default from the ``DUALNN_FUSED`` environment variable (on).
    """

    def __init__(self, fused=None):
        super().__init__(np, name="numpy", device="cpu")
        self.fused = fused_kernels_enabled() if fused is None else bool(fused)
        self.reuses_buffers = True  # models may keep per-step scratch arrays

    def owns(self, a):
        return isinstance(a, np.ndarray)

    def asarray(self, a, dtype=None):
        return np.ascontiguousarray(a, dtype=None if dtype is None else self.dtype(dtype))

    def to_host(self, a):
        return np.asarray(a)

    def empty(self, shape, dtype="float32"):
        """Uninitialized; arrays of >= 4 MiB are 2 MiB-aligned (see :mod:`dualnn.backend.allocation`)."""
        return aligned_empty(shape, self.dtype(dtype))

    def zeros(self, shape, dtype="float32"):
        """Zeros; arrays of >= 4 MiB are 2 MiB-aligned (see :mod:`dualnn.backend.allocation`)."""
        return aligned_zeros(shape, self.dtype(dtype))

    def store(self, a, dtype=None):
        out = self.empty(np.shape(a), np.asarray(a).dtype if dtype is None else dtype)
        out[...] = a
        return out

    def matmul(self, a, b, out=None):
        return np.matmul(a, b, out=out)

    # ------------------------------------------------------------------ fused-op dispatch
    # Each override runs the Numba kernel of dualnn.kernels.cpu when ``self.fused`` is on
    # and every array is a C-contiguous float32/float64 NumPy array of one dtype with the
    # shape the op expects (outputs: the same array as their alias, or disjoint); anything
    # else runs the reference math of the base class, so results never depend on the path.

    def _fusable(self, *arrays):
        if not self.fused:
            return False
        first = arrays[0]
        if not isinstance(first, np.ndarray) or first.dtype not in _FUSED_DTYPES:
            return False
        for a in arrays:
            if not (isinstance(a, np.ndarray) and a.dtype == first.dtype
                    and a.flags.c_contiguous):
                return False
        return True

    @staticmethod
    def _out_ok(out, shape, *inputs):
        """``out`` has ``shape`` and is writable, and is each input or disjoint from it."""
        if out.shape != shape or not out.flags.writeable:
            return False
        for a in inputs:
            if a is out or not np.may_share_memory(a, out):
                continue
            if (a.shape == out.shape and a.__array_interface__["data"][0]
                    == out.__array_interface__["data"][0]):
                continue  # another view of exactly the same memory
            return False
        return True

    def activation_forward(self, kind, z, alpha=0.0, out=None):
        if kind == "identity" or kind not in ACTIVATIONS or not self._fusable(z):
            return super().activation_forward(kind, z, alpha, out)
        if out is None:
            out = np.empty_like(z)
        elif not (self._fusable(z, out) and self._out_ok(out, z.shape, z)):
            return super().activation_forward(kind, z, alpha, out)
        return _cpu().activation_forward(kind, z, alpha, out)

    def bias_activation_forward(self, z, b, kind, alpha=0.0, out=None):
        if b is None:
            if kind == "identity":
                return super().bias_activation_forward(z, b, kind, alpha, out)
            return self.activation_forward(kind, z, alpha, out)
        if (kind not in ACTIVATIONS or not self._fusable(z, b) or z.ndim != 2
                or b.shape != (z.shape[1],)):
            return super().bias_activation_forward(z, b, kind, alpha, out)
        if out is None:
            out = np.empty_like(z)
        elif not (self._fusable(z, out) and self._out_ok(out, z.shape, z, b)):
            return super().bias_activation_forward(z, b, kind, alpha, out)
        return _cpu().bias_activation_forward(z, b, kind, alpha, out)

    def activation_backward(self, kind, dy, saved, alpha=0.0, out=None):
        if (kind not in ACTIVATIONS or not self._fusable(dy, saved)
                or dy.shape != saved.shape):
            return super().activation_backward(kind, dy, saved, alpha, out)
        if out is None:
            if kind == "identity":
                return dy  # the reference returns dy itself
            out = np.empty_like(dy)
        elif not (self._fusable(dy, out) and self._out_ok(out, dy.shape, dy, saved)):
            return super().activation_backward(kind, dy, saved, alpha, out)
        return _cpu().activation_backward(kind, dy, saved, alpha, out)

    def _bn_fusable(self, x, *vectors):
        return (self._fusable(x, *vectors) and x.ndim == 2
                and all(v.shape == (x.shape[1],) for v in vectors))

    def batchnorm_forward_train(self, x, gamma, beta, running_mean, running_var, eps,
                                momentum, relu=False, out=None):
        if (not self._bn_fusable(x, gamma, beta, running_mean, running_var)
                or x.shape[0] < 2 or not running_mean.flags.writeable
                or not running_var.flags.writeable):
            return super().batchnorm_forward_train(x, gamma, beta, running_mean, running_var,
                                                   eps, momentum, relu, out)
        if out is None:
            out = np.empty_like(x)
        elif not (self._fusable(x, out) and self._out_ok(
                out, x.shape, x, gamma, beta, running_mean, running_var)):
            return super().batchnorm_forward_train(x, gamma, beta, running_mean, running_var,
                                                   eps, momentum, relu, out)
        c = x.shape[1]
        mean = np.empty(c, dtype=x.dtype)
        invstd = np.empty(c, dtype=x.dtype)
        _cpu().batchnorm_forward_train(x, gamma, beta, running_mean, running_var, eps,
                                       momentum, relu, out, mean, invstd)
        return out, mean, invstd

    def batchnorm_forward_eval(self, x, gamma, beta, running_mean, running_var, eps,
                               relu=False, out=None):
        if not self._bn_fusable(x, gamma, beta, running_mean, running_var):
            return super().batchnorm_forward_eval(x, gamma, beta, running_mean, running_var,
                                                  eps, relu, out)
        if out is None:
            out = np.empty_like(x)
        elif not (self._fusable(x, out) and self._out_ok(
                out, x.shape, x, gamma, beta, running_mean, running_var)):
            return super().batchnorm_forward_eval(x, gamma, beta, running_mean, running_var,
                                                  eps, relu, out)
        return _cpu().batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps,
                                             relu, out)

    def batchnorm_backward(self, dy, x, gamma, beta, mean, invstd, relu=False, out=None):
        if (not self._bn_fusable(x, gamma, beta, mean, invstd) or not self._fusable(x, dy)
                or dy.shape != x.shape):
            return super().batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu, out)
        if out is None:
            out = np.empty_like(x)
        elif not (self._fusable(x, out) and self._out_ok(
                out, x.shape, dy, x, gamma, beta, mean, invstd)):
            return super().batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu, out)
        c = x.shape[1]
        dgamma = np.empty(c, dtype=x.dtype)
        dbeta = np.empty(c, dtype=x.dtype)
        return _cpu().batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu, out,
                                         dgamma, dbeta)

    def softmax_cross_entropy(self, logits, labels):
        if (not self._fusable(logits) or logits.ndim != 2 or logits.shape[0] < 1
                or logits.shape[1] < 1 or not isinstance(labels, np.ndarray)
                or labels.dtype.kind not in "iu" or labels.shape != (logits.shape[0],)):
            return super().softmax_cross_entropy(logits, labels)
        dlogits = np.empty_like(logits)
        try:
            loss = _cpu().softmax_cross_entropy(logits, labels, dlogits)
        except ValueError as exc:  # a label outside [0, classes)
            raise ShapeError(f"softmax_cross_entropy: {exc}") from None
        return np.asarray(loss, dtype=logits.dtype), dlogits

    def _state_fusable(self, param, *state):
        arrays = [a for a in state if a is not None]
        return (self._fusable(param, *arrays) and param.flags.writeable
                and all(a.shape == param.shape for a in arrays))

    def sgd_update(self, param, grad, momentum_buffer, **hyper):
        needs_buffer = hyper.get("momentum", 0.0) != 0
        if (needs_buffer and momentum_buffer is None) or not self._state_fusable(
                param, grad, momentum_buffer if needs_buffer else None):
            return super().sgd_update(param, grad, momentum_buffer, **hyper)
        _cpu().sgd_update(param, grad, momentum_buffer, **hyper)

    def adam_update(self, param, grad, exp_avg, exp_avg_sq, **hyper):
        if not self._state_fusable(param, grad, exp_avg, exp_avg_sq):
            return super().adam_update(param, grad, exp_avg, exp_avg_sq, **hyper)
        _cpu().adam_update(param, grad, exp_avg, exp_avg_sq, **hyper)

    def rmsprop_update(self, param, grad, square_avg, momentum_buffer, grad_avg, **hyper):
        needs_buffer = hyper.get("momentum", 0.0) > 0
        centered = bool(hyper.get("centered", False))
        if ((needs_buffer and momentum_buffer is None) or (centered and grad_avg is None)
                or not self._state_fusable(param, grad, square_avg,
                                           momentum_buffer if needs_buffer else None,
                                           grad_avg if centered else None)):
            return super().rmsprop_update(param, grad, square_avg, momentum_buffer, grad_avg,
                                          **hyper)
        _cpu().rmsprop_update(param, grad, square_avg, momentum_buffer, grad_avg, **hyper)

    def adagrad_update(self, param, grad, state_sum, **hyper):
        if not self._state_fusable(param, grad, state_sum):
            return super().adagrad_update(param, grad, state_sum, **hyper)
        _cpu().adagrad_update(param, grad, state_sum, **hyper)

    def adadelta_update(self, param, grad, square_avg, acc_delta, **hyper):
        if not self._state_fusable(param, grad, square_avg, acc_delta):
            return super().adadelta_update(param, grad, square_avg, acc_delta, **hyper)
        _cpu().adadelta_update(param, grad, square_avg, acc_delta, **hyper)

    def lars_update(self, param, grad, momentum_buffer, **hyper):
        if not self._state_fusable(param, grad, momentum_buffer):
            return super().lars_update(param, grad, momentum_buffer, **hyper)
        from ..kernels.trust_ratio import cpu as trust_ratio

        trust_ratio.lars_update(param, grad, momentum_buffer, **hyper)

    def lamb_update(self, param, grad, exp_avg, exp_avg_sq, **hyper):
        if not self._state_fusable(param, grad, exp_avg, exp_avg_sq):
            return super().lamb_update(param, grad, exp_avg, exp_avg_sq, **hyper)
        from ..kernels.trust_ratio import cpu as trust_ratio

        trust_ratio.lamb_update(param, grad, exp_avg, exp_avg_sq, **hyper)


_FUSED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _cpu():
    """The Numba kernels module (importing it does not import Numba; first calls compile)."""
    global _cpu_module
    if _cpu_module is None:
        from ..kernels import cpu

        _cpu_module = cpu
    return _cpu_module


_cpu_module = None
