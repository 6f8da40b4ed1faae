"""The CPU backend: NumPy arrays, fused Numba kernels where they apply."""

from __future__ import annotations

import os

import numpy as np

from ..errors import ShapeError
from ..kernels.ops import ACTIVATIONS
from . import bf16_matmul
from . import mkl_gemm as mkl_gemm_module
from .allocation import aligned_empty, aligned_zeros
from .base import ArrayAPIBackend, is_dlpack_foreign
from .fused import FusedDispatch


def fused_kernels_enabled():
    """Whether fused kernels are switched on (``DUALNN_FUSED=0`` switches them off)."""
    return os.environ.get("DUALNN_FUSED", "1").strip().lower() not in ("0", "false", "no", "off")


class NumpyBackend(FusedDispatch, ArrayAPIBackend):
    """NumPy on the CPU.

    Ops with a Numba kernel in :mod:`dualnn.kernels.cpu` run it for float32/float64
    C-contiguous arrays when ``fused`` is true; other cases run the reference math.

    Parameters
    ----------
    fused : bool, optional
        Use the fused kernels; default from the ``DUALNN_FUSED`` environment variable (on).
    mkl_gemm : bool, optional
        Send big 2-D float GEMMs to oneMKL when it is installed (:mod:`~dualnn.backend.mkl_gemm`);
        default from the ``DUALNN_MKL_GEMM`` environment variable (on).
    """

    def __init__(self, fused=None, mkl_gemm=None):
        super().__init__(np, name="numpy", device="cpu")
        self.fused = fused_kernels_enabled() if fused is None else bool(fused)
        self.mkl_gemm = mkl_gemm_module.wanted()[0] if mkl_gemm is None \
            else bool(mkl_gemm)
        self.reuses_buffers = True  # models may keep per-step scratch arrays
        self._bf16_gemms = None  # the active bf16_matmul.Bfloat16Gemms, if any

    def owns(self, a):
        return isinstance(a, np.ndarray)

    def asarray(self, a, dtype=None):
        if is_dlpack_foreign(a):  # e.g. a PyTorch CPU tensor: a view, not a copy
            a = self.from_dlpack(a)
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

    def round_to_precision(self, a, dtype):
        """16-bit rounding (see the base class); the Numba kernel for C-contiguous
        float32 arrays when fused (inside bfloat16 GEMMs, one that also keeps the bits)."""
        gemms = self._bf16_gemms
        if (gemms is not None and dtype == "bfloat16" and isinstance(a, np.ndarray)
                and a.dtype == np.float32 and a.flags.c_contiguous):
            return gemms.rounded(a)
        if (self.fused and dtype in ("float16", "bfloat16") and isinstance(a, np.ndarray)
                and a.dtype == np.float32 and a.flags.c_contiguous):
            from ..kernels import cpu

            kernel = cpu.round_bfloat16 if dtype == "bfloat16" else cpu.round_float16
            return kernel(a, out=self.empty(a.shape, "float32"))
        return super().round_to_precision(a, dtype)

    def _deferred(self, a):
        """Whether ``a`` is stored in bfloat16 with its rounding left to the reader (see
        ``Bfloat16Gemms.defer``)."""
        gemms = self._bf16_gemms
        return gemms is not None and gemms.deferred(a)

    def _materialized(self, a):
        """``a`` itself, or its bfloat16 rounding when that was deferred to this reader."""
        return self._bf16_gemms.rounded(a) if self._deferred(a) else a

    def _step_array(self, like):
        """An uninitialized array like ``like`` for a fused op's output: inside bfloat16
        GEMMs one of the step buffers they recycle (see ``bf16_matmul``), else new."""
        gemms = self._bf16_gemms
        if gemms is None:
            return np.empty_like(like)
        return gemms.step_array(like.shape, like.dtype)

    def matmul(self, a, b, out=None):
        gemms = self._bf16_gemms
        if gemms is not None and bf16_matmul.takes(a, b):
            return gemms.matmul(a, b, out=out)
        if self.mkl_gemm and mkl_gemm_module.takes(a, b, out):
            return mkl_gemm_module.gemm(a, b, out=out)
        return np.matmul(a, b, out=out)

    def matmul_accumulate(self, a, b, out, overwrite=False):
        gemms = self._bf16_gemms
        if gemms is not None and bf16_matmul.takes(a, b):
            return gemms.matmul(a, b, out=out, beta=0.0 if overwrite else 1.0)
        if self.mkl_gemm and mkl_gemm_module.takes(a, b, out):
            return mkl_gemm_module.gemm(a, b, out=out, beta=0.0 if overwrite else 1.0)
        return super().matmul_accumulate(a, b, out, overwrite)

    def bfloat16_gemms(self):
        """``(gemms, reason)``: a :class:`~dualnn.backend.bf16_matmul.Bfloat16Gemms` when
        oneMKL's bfloat16 GEMM runs here and fused kernels are on, else ``(None, why)``.
        The first call loads oneMKL. ``DUALNN_BF16_GEMM=0`` turns the path off."""
        if not self.fused:
            return None, "fused kernels are off (DUALNN_FUSED=0)"
        if os.environ.get("DUALNN_BF16_GEMM", "1").strip().lower() in ("0", "false", "no",
                                                                        "off"):
            return None, "switched off by DUALNN_BF16_GEMM=0"
        from . import bf16_gemm

        ok, reason = bf16_gemm.availability()
        return (bf16_matmul.Bfloat16Gemms(self), None) if ok else (None, reason)

    # ------------------------------------------------------------------ fused-op dispatch
    # Each override runs the Numba kernel of dualnn.kernels.cpu when the kernel takes the
    # arrays (FusedDispatch._kernel_takes); anything else runs the reference math of the
    # base class, so results never depend on the path. The kernels check their arguments.

    def activation_forward(self, kind, z, alpha=0.0, out=None):
        if (kind == "identity" or kind not in ACTIVATIONS
                or self._kernel_takes([(z, None)], [(out, z.shape)]) is None):
            return super().activation_forward(kind, z, alpha, out)
        out = self._step_array(z) if out is None else out
        return _cpu().activation_forward(kind, z, alpha, out=out)

    def bias_activation_forward(self, z, b, kind, alpha=0.0, out=None):
        if b is None and kind != "identity":
            return self.activation_forward(kind, z, alpha, out)
        if (b is None or kind not in ACTIVATIONS or z.ndim != 2
                or self._kernel_takes([(z, None), (b, (z.shape[1],))],
                                      [(out, z.shape)]) is None):
            return super().bias_activation_forward(z, b, kind, alpha, out)
        out = self._step_array(z) if out is None else out
        return _cpu().bias_activation_forward(z, b, kind, alpha, out=out)

    def activation_backward(self, kind, dy, saved, alpha=0.0, out=None):
        if (kind not in ACTIVATIONS or self._kernel_takes(
                [(dy, None), (saved, dy.shape)], [(out, dy.shape)]) is None):
            return super().activation_backward(kind, dy, saved, alpha, out)
        if out is None:
            if kind == "identity":
                return dy  # the reference returns dy itself
            out = self._step_array(dy)
        return _cpu().activation_backward(kind, dy, saved, alpha, out=out)

    def batchnorm_forward_train(self, x, gamma, beta, running_mean, running_var, eps,
                                momentum, relu=False, out=None, stats_out=None):
        c = _features(x)
        if (c is None or x.shape[0] < 2 or self._kernel_takes(
                [(x, None), (gamma, (c,)), (beta, (c,))],
                [(out, x.shape), (running_mean, (c,)), (running_var, (c,))]) is None):
            return super().batchnorm_forward_train(self._materialized(x), gamma, beta,
                                                   running_mean, running_var, eps, momentum,
                                                   relu, out, stats_out=stats_out)
        out = self._step_array(x) if out is None else out
        round_input = self._deferred(x)
        if stats_out is not None and all(isinstance(a, np.ndarray) and a.shape == (c,)
                                         and a.dtype == x.dtype for a in stats_out):
            mean, invstd = stats_out
        else:
            mean, invstd = np.empty(c, dtype=x.dtype), np.empty(c, dtype=x.dtype)
        result = _cpu().batchnorm_forward_train(
            x, gamma, beta, running_mean, running_var, eps, momentum, relu, out=out,
            mean=mean, invstd=invstd, round_input=round_input)
        if round_input and out is x:
            self._bf16_gemms.forget(x)
        return result

    def batchnorm_forward_eval(self, x, gamma, beta, running_mean, running_var, eps,
                               relu=False, out=None):
        c = _features(x)
        if c is None or self._kernel_takes(
                [(x, None), (gamma, (c,)), (beta, (c,)), (running_mean, (c,)),
                 (running_var, (c,))], [(out, x.shape)]) is None:
            return super().batchnorm_forward_eval(x, gamma, beta, running_mean, running_var,
                                                  eps, relu, out)
        out = np.empty_like(x) if out is None else out
        return _cpu().batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps,
                                             relu, out=out)

    def batchnorm_backward(self, dy, x, gamma, beta, mean, invstd, relu=False, out=None):
        c = _features(x)
        if c is None or self._kernel_takes(
                [(dy, x.shape), (x, None), (gamma, (c,)), (beta, (c,)), (mean, (c,)),
                 (invstd, (c,))], [(out, x.shape)]) is None:
            return super().batchnorm_backward(self._materialized(dy), self._materialized(x),
                                              gamma, beta, mean, invstd, relu, out)
        out = self._step_array(x) if out is None else out
        round_dy = self._deferred(dy)
        result = _cpu().batchnorm_backward(
            dy, x, gamma, beta, mean, invstd, relu, out=out,
            dgamma=np.empty(c, dtype=x.dtype), dbeta=np.empty(c, dtype=x.dtype),
            round_x=self._deferred(x), round_dy=round_dy)
        if round_dy and out is dy:
            self._bf16_gemms.forget(dy)
        return result

    def softmax_cross_entropy(self, logits, labels, loss_out=None):
        if (logits.ndim != 2 or 0 in logits.shape or not isinstance(labels, np.ndarray)
                or labels.dtype.kind not in "iu" or labels.shape != (logits.shape[0],)
                or self._kernel_takes([(logits, None)], [(loss_out, ())]) is None):
            return super().softmax_cross_entropy(logits, labels, loss_out)
        k = _cpu()
        shape, scratch_dtype = k.softmax_cross_entropy_scratch(logits.shape[0], logits.dtype)
        try:
            return k.softmax_cross_entropy(
                logits, labels,
                loss=np.empty((), dtype=logits.dtype) if loss_out is None else loss_out,
                dlogits=np.empty_like(logits), row_loss=np.empty(shape, scratch_dtype))
        except ValueError as exc:  # a label outside [0, classes)
            raise ShapeError(f"softmax_cross_entropy: {exc}") from None

    def sgd_update(self, param, grad, momentum_buffer, **hyper):
        needs_buffer = hyper.get("momentum", 0.0) != 0
        if (needs_buffer and momentum_buffer is None) or not self._update_takes(
                param, grad, momentum_buffer if needs_buffer else None):
            return super().sgd_update(param, grad, momentum_buffer, **hyper)
        _cpu().sgd_update(param, grad, momentum_buffer, **hyper)

    def adam_update(self, param, grad, exp_avg, exp_avg_sq, **hyper):
        if not self._update_takes(param, grad, exp_avg, exp_avg_sq):
            return super().adam_update(param, grad, exp_avg, exp_avg_sq, **hyper)
        _cpu().adam_update(param, grad, exp_avg, exp_avg_sq, **hyper)

    def rmsprop_update(self, param, grad, square_avg, momentum_buffer, grad_avg, **hyper):
        needs_buffer = hyper.get("momentum", 0.0) > 0
        centered = bool(hyper.get("centered", False))
        if ((needs_buffer and momentum_buffer is None) or (centered and grad_avg is None)
                or not self._update_takes(param, grad, square_avg,
                                          momentum_buffer if needs_buffer else None,
                                          grad_avg if centered else None)):
            return super().rmsprop_update(param, grad, square_avg, momentum_buffer, grad_avg,
                                          **hyper)
        _cpu().rmsprop_update(param, grad, square_avg, momentum_buffer, grad_avg, **hyper)

    def adagrad_update(self, param, grad, state_sum, **hyper):
        if not self._update_takes(param, grad, state_sum):
            return super().adagrad_update(param, grad, state_sum, **hyper)
        _cpu().adagrad_update(param, grad, state_sum, **hyper)

    def adadelta_update(self, param, grad, square_avg, acc_delta, **hyper):
        if not self._update_takes(param, grad, square_avg, acc_delta):
            return super().adadelta_update(param, grad, square_avg, acc_delta, **hyper)
        _cpu().adadelta_update(param, grad, square_avg, acc_delta, **hyper)

    def lars_update(self, param, grad, momentum_buffer, **hyper):
        if not self._update_takes(param, grad, momentum_buffer):
            return super().lars_update(param, grad, momentum_buffer, **hyper)
        from ..kernels.trust_ratio import cpu as trust_ratio

        trust_ratio.lars_update(param, grad, momentum_buffer, **hyper)

    def lamb_update(self, param, grad, exp_avg, exp_avg_sq, **hyper):
        if not self._update_takes(param, grad, exp_avg, exp_avg_sq):
            return super().lamb_update(param, grad, exp_avg, exp_avg_sq, **hyper)
        from ..kernels.trust_ratio import cpu as trust_ratio

        trust_ratio.lamb_update(param, grad, exp_avg, exp_avg_sq, **hyper)


def _features(x):
    """``c`` of a 2-D ``(n, c)`` array, else None (the batch-norm kernels take 2-D only)."""
    return x.shape[1] if getattr(x, "ndim", 0) == 2 else None


def _cpu():
    """The Numba kernels module (importing it does not import Numba; first calls compile)."""
    global _cpu_module
    if _cpu_module is None:
        from ..kernels import cpu

        _cpu_module = cpu
    return _cpu_module


_cpu_module = None
