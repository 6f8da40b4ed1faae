"""The GPU backend: CuPy arrays, fused Numba-CUDA kernels where they apply.

:class:`CudaKernelOps` holds the dispatch from the backend's fused-op methods to the
launchers of :mod:`dualnn.kernels.cuda`; :class:`CupyBackend` mixes it in for CuPy
arrays on a GPU; the test suite's ``CudaSimBackend`` (``tests/support``) mixes it in for
NumPy arrays under Numba's CUDA simulator, so the simulator tests run this very code.
"""

from __future__ import annotations

import contextlib

import numpy as np

from ..errors import ShapeError
from ..kernels.ops import ACTIVATIONS, COMPUTE_DTYPE, LABEL_DTYPES, STORAGE_TYPE
from .base import ArrayAPIBackend, dtype_name, is_dlpack_foreign
from .fused import FusedDispatch
from .numpy_backend import fused_kernels_enabled


def _dtype_str(a):
    return np.dtype(a.dtype).name


_ACTIVATION_HALF = ("float16", "bfloat16")
"""16-bit storage the activation and softmax cross-entropy kernels take (bfloat16 as uint16
bit patterns)."""

_HALF = ("float16", "bfloat16")
"""16-bit storage the batch-norm kernels take (bfloat16 as uint16 bit patterns)."""


class CudaKernelOps(FusedDispatch):
    """Fused ops that run the Numba-CUDA launchers of :mod:`dualnn.kernels.cuda`.

    Mix in before an array backend (``class B(CudaKernelOps, SomeBackend)``). Each op runs
    its kernel when ``self.fused`` is true and every array is owned by this backend,
    float32 or float64 (one dtype), C-contiguous and of the expected shapes; otherwise it
    defers to ``super()`` (the reference math on the same arrays).

    Mixed precision: activations and their gradients may also be float16 (the activation,
    batch-norm and softmax cross-entropy ops also take bfloat16 stored as uint16 bit patterns); then biases, batch-norm gamma/
    beta/statistics and the loss must be float32 and every kernel computes in float32 (see
    docs/gpu_training.md, "Mixed precision on the GPU").

    Outputs that callers keep (``y``, ``mean``, ``dgamma``, the loss...) are allocated per
    call from the backend's array library (CuPy's memory pool on a GPU); scratch buffers
    that live only inside one op are allocated once per (shape, dtype, stream) and reused.
    Nothing here reads a device value back to the host.
    """

    def _init_kernel_ops(self):
        self._scratch_buffers = {}

    @property
    def kernels(self):
        """The :mod:`dualnn.kernels.cuda` module (imported on first use)."""
        from ..kernels import cuda

        return cuda

    # -- hooks a concrete backend may override
    def _stream_key(self):
        """Identifies the stream kernels run on (scratch is reused per stream)."""
        return 0

    def _launch_scope(self):
        """Context entered around launches (the CuPy backend selects its device)."""
        return contextlib.nullcontext()

    def scratch(self, tag, shape, dtype):
        """A reusable buffer for ``tag`` of ``shape``/``dtype`` on the current stream."""
        key = (tag, tuple(shape), dtype, self._stream_key())
        buf = self._scratch_buffers.get(key)
        if buf is None:
            buf = self.xp.empty(tuple(shape), dtype=self.dtype(dtype))
            self._scratch_buffers[key] = buf
        return buf

    def _new(self, shape, dtype):
        return self.xp.empty(tuple(shape), dtype=self.dtype(dtype))

    # -- device-side checks: out= into reused buffers, so a step allocates nothing
    def update_label_range(self, labels, bounds):
        xp = self.xp
        seen = self.scratch("label_range", (2,), bounds.dtype)
        xp.min(labels, axis=0, keepdims=True, out=seen[0:1])
        xp.max(labels, axis=0, keepdims=True, out=seen[1:2])
        xp.minimum(bounds[0:1], seen[0:1], out=bounds[0:1])
        xp.maximum(bounds[1:2], seen[1:2], out=bounds[1:2])
        return bounds

    def nonfinite_index(self, arrays):
        xp = self.xp
        flags = self.scratch("finite_flags", (len(arrays),), "bool")
        for i, a in enumerate(arrays):
            ok = self.scratch("finite", (int(a.size),), "bool")
            xp.isfinite(a.reshape(-1), out=ok)
            xp.all(ok, axis=0, keepdims=True, out=flags[i:i + 1])
        host = self.to_host(flags)  # the one read
        bad = np.flatnonzero(~host)
        return int(bad[0]) if bad.size else -1

    def _scaler_takes(self, *arrays):
        return self.fused and all(
            self.owns(a) and a.flags.c_contiguous
            and _dtype_str(a) in ("float32", "float64", "int32") for a in arrays)

    def grad_check_finite(self, grads, found_inf, inv_scale=None):
        grads = list(grads)
        if not self._scaler_takes(found_inf, *grads, *(() if inv_scale is None
                                                       else (inv_scale,))) or any(
                inv_scale is not None and _dtype_str(g) != _dtype_str(inv_scale)
                for g in grads):
            return super().grad_check_finite(grads, found_inf, inv_scale)
        from ..kernels.optim import cuda as optim

        with self._launch_scope():
            for g in grads:  # one launch per array: one in all over a flat gradient
                optim.grad_check_finite(g, found_inf, inv_scale=inv_scale)

    def loss_scale_update(self, scale, inv_scale, growth_tracker, found_inf, *, growth_factor,
                          backoff_factor, growth_interval, counters=()):
        if not self._scaler_takes(scale, inv_scale, growth_tracker, found_inf, *counters):
            return super().loss_scale_update(
                scale, inv_scale, growth_tracker, found_inf, growth_factor=growth_factor,
                backoff_factor=backoff_factor, growth_interval=growth_interval,
                counters=counters)
        from ..kernels.optim import cuda as optim

        for c in counters:
            self.xp.add(c, found_inf, out=c)
        with self._launch_scope():
            optim.loss_scale_update(scale, inv_scale, growth_tracker, found_inf,
                                    growth_factor=growth_factor,
                                    backoff_factor=backoff_factor,
                                    growth_interval=growth_interval)

    def sum_of_squares(self, arrays, out):
        xp = self.xp
        arrays = list(arrays)
        dtype = _dtype_str(out)
        parts = self.scratch("sum_of_squares", (max(len(arrays), 1),), dtype)
        parts[...] = 0
        for i, a in enumerate(arrays):
            square = self.scratch("square", (int(a.size),), _dtype_str(a))
            flat = a.reshape(-1)
            xp.multiply(flat, flat, out=square)
            xp.sum(square, axis=0, keepdims=True, out=parts[i:i + 1])
        xp.sum(parts, out=out)
        return out

    def clip_factor(self, total, max_norm, eps):
        xp = self.xp
        xp.sqrt(total, out=total)
        xp.add(total, eps, out=total)
        xp.divide(max_norm, total, out=total)
        xp.minimum(total, 1.0, out=total)
        return total

    def scale_into(self, a, factor, out):
        return self.xp.multiply(a, factor, out=out)

    def multiply_into(self, a, b, out):
        return self.xp.multiply(a, b, out=out)

    def dropout_mask(self, shape, dtype, p, out=None):
        dtype = dtype_name(dtype)
        if out is None or not (self.owns(out) and tuple(out.shape) == tuple(shape)
                               and _dtype_str(out) == dtype):
            return super().dropout_mask(shape, dtype, p, out)
        xp = self.xp
        uniform = self.random_uniform(shape, dtype, out=self.scratch("dropout_uniform",
                                                                     shape, dtype))
        xp.greater_equal(uniform, p, out=out)
        return xp.multiply(out, 1 / (1 - p), out=out)

    def add_l1_into(self, grad, data, l1, out):
        xp = self.xp
        xp.sign(data, out=out)
        xp.multiply(out, l1, out=out)
        return xp.add(grad, out, out=out)

    def max_norm_rows(self, data, max_norm):
        xp = self.xp
        rows = data.reshape(data.shape[0], -1)
        square = self.scratch("max_norm_square", rows.shape, _dtype_str(data))
        norms = self.scratch("max_norm_rows", (rows.shape[0], 1), _dtype_str(data))
        xp.multiply(rows, rows, out=square)
        xp.sum(square, axis=1, keepdims=True, out=norms)
        xp.sqrt(norms, out=norms)
        xp.maximum(norms, max_norm, out=norms)
        xp.divide(max_norm, norms, out=norms)
        xp.multiply(rows, norms, out=rows)
        return data

    def sum_rows_into(self, dy, out, overwrite=False):
        """The bias gradient: the column-sum kernel (batch norm's deterministic 2-D
        reduction, no atomics) where it applies, else CuPy's axis-0 sum."""
        if dy.ndim == 2 and self._kernel_takes([(dy, None)], [(out, (dy.shape[1],))]):
            k = self.kernels
            scratch = self.scratch("column_sum", k.column_sum_scratch_shape(*dy.shape),
                                   _dtype_str(dy))
            with self._launch_scope():
                return k.column_sum(dy, out=out, scratch=scratch, accumulate=not overwrite)
        xp = self.xp
        if overwrite:
            return xp.sum(dy, axis=0, out=out)
        rows = self.scratch("sum_rows", out.shape, _dtype_str(out))
        xp.sum(dy, axis=0, out=rows)
        return xp.add(out, rows, out=out)

    def column_sums2(self, a, b, out=None):
        """See the base class: one pass of the deterministic 2-D reduction kernel (no
        ``a * b`` temporary) where it applies, else CuPy's axis-0 sums."""
        if a.ndim == 2:
            c = a.shape[1]
            if out is None:
                out = self.xp.empty((2 * c,), dtype=a.dtype)
            if self._kernel_takes([(a, None), (b, tuple(a.shape))], [(out, (2 * c,))]):
                k = self.kernels
                scratch = self.scratch("column_sums2", k.column_sums2_scratch_shape(*a.shape),
                                       _dtype_str(a))
                with self._launch_scope():
                    return k.column_sums2(a, b, out=out, scratch=scratch)
        return super().column_sums2(a, b, out=out)

    def accumulate(self, total, value, weight=1):
        xp = self.xp
        if total is None:  # the running total: allocated once per epoch
            total = xp.zeros((), dtype=value.dtype)
        if weight != 1:
            term = self.scratch("accumulate", (), _dtype_str(value))
            xp.multiply(value, weight, out=term)
            value = term
        return xp.add(total, value, out=total)

    def count_correct(self, scores, labels, total=None):
        xp = self.xp
        n = scores.shape[0]
        if total is None:
            total = xp.zeros((), dtype=xp.int64)
        predicted = self.scratch("count_correct_argmax", (n,), "int64")
        hit = self.scratch("count_correct_hit", (n,), "bool")
        hits = self.scratch("count_correct_sum", (), "int64")
        xp.argmax(scores, axis=1, out=predicted)
        xp.equal(predicted, labels, out=hit)
        xp.sum(hit, dtype=xp.int64, out=hits)
        return xp.add(total, hits, out=total)

    # -- activations
    def round_to_precision(self, a, dtype):
        """16-bit rounding (see the base class); bfloat16 of float32 runs the CUDA kernel."""
        if dtype == "bfloat16" and self._kernel_takes([(a, None)]) == "float32":
            with self._launch_scope():
                return self.kernels.round_bfloat16(a, out=self._new(a.shape, "float32"))
        return super().round_to_precision(a, dtype)

    def _new_storage(self, shape, dtype):
        """A new array of kernel dtype ``dtype`` (uint16 bits for bfloat16)."""
        return self._new(shape, STORAGE_TYPE[dtype])

    def activation_forward(self, kind, z, alpha=0.0, out=None):
        dtype = self._kernel_takes([(z, None)], [(out, z.shape)], half=_ACTIVATION_HALF)
        if dtype is None or kind == "identity" or kind not in ACTIVATIONS:
            return super().activation_forward(kind, z, alpha, out=out)
        out = self._new_storage(z.shape, dtype) if out is None else out
        with self._launch_scope():
            return self.kernels.activation_forward(kind, z, alpha, out=out)

    def bias_activation_forward(self, z, b, kind, alpha=0.0, out=None):
        dtype = None
        if z.ndim == 2 and kind in ACTIVATIONS and not (b is None and kind == "identity"):
            dtype = self._kernel_takes([(z, None)], [(out, z.shape)],
                                       params=[(b, (z.shape[1],))], half=_ACTIVATION_HALF)
        if dtype is None:
            return super().bias_activation_forward(z, b, kind, alpha, out=out)
        out = self._new_storage(z.shape, dtype) if out is None else out
        with self._launch_scope():
            return self.kernels.bias_activation_forward(z, b, kind, alpha, out=out)

    def activation_backward(self, kind, dy, saved, alpha=0.0, out=None):
        dtype = self._kernel_takes([(dy, None), (saved, dy.shape)], [(out, dy.shape)],
                                   half=_ACTIVATION_HALF)
        if dtype is None or kind not in ACTIVATIONS or (kind == "identity" and out is None):
            return super().activation_backward(kind, dy, saved, alpha, out=out)
        out = self._new_storage(dy.shape, dtype) if out is None else out
        with self._launch_scope():
            return self.kernels.activation_backward(kind, dy, saved, alpha, out=out)

    # -- batch norm
    def batchnorm_forward_train(self, x, gamma, beta, running_mean, running_var, eps,
                                momentum, relu=False, out=None, stats_out=None):
        dtype = None
        if x.ndim == 2 and x.shape[0] >= 2:
            c = (x.shape[1],)
            dtype = self._kernel_takes([(x, None)], [(out, x.shape)],
                                       params=[(gamma, c), (beta, c)],
                                       param_outputs=[(running_mean, c), (running_var, c)],
                                       half=_HALF)
        if dtype is None:
            return super().batchnorm_forward_train(x, gamma, beta, running_mean, running_var,
                                                   eps, momentum, relu=relu, out=out,
                                                   stats_out=stats_out)
        n, c = x.shape
        k = self.kernels
        acc = COMPUTE_DTYPE[dtype]
        out = self._new_storage(x.shape, dtype) if out is None else out
        if stats_out is not None and all(
                self.owns(a) and tuple(a.shape) == (c,) and _dtype_str(a) == acc
                for a in stats_out):
            mean, invstd = stats_out
        else:
            mean, invstd = self._new((c,), acc), self._new((c,), acc)
        scratch = self.scratch("batchnorm", k.batchnorm_scratch_shape(n, c), acc)
        with self._launch_scope():
            return k.batchnorm_forward_train(x, gamma, beta, running_mean, running_var, eps,
                                             momentum, relu, out=out, mean=mean,
                                             invstd=invstd, scratch=scratch)

    def batchnorm_forward_eval(self, x, gamma, beta, running_mean, running_var, eps,
                               relu=False, out=None):
        dtype = None
        if x.ndim == 2:
            c = (x.shape[1],)
            dtype = self._kernel_takes([(x, None)], [(out, x.shape)],
                                       params=[(gamma, c), (beta, c), (running_mean, c),
                                               (running_var, c)], half=_HALF)
        if dtype is None:
            return super().batchnorm_forward_eval(x, gamma, beta, running_mean, running_var,
                                                  eps, relu=relu, out=out)
        out = self._new_storage(x.shape, dtype) if out is None else out
        with self._launch_scope():
            return self.kernels.batchnorm_forward_eval(x, gamma, beta, running_mean,
                                                       running_var, eps, relu, out=out)

    def batchnorm_backward(self, dy, x, gamma, beta, mean, invstd, relu=False, out=None):
        dtype = None
        if x.ndim == 2:
            c = (x.shape[1],)
            dtype = self._kernel_takes([(dy, x.shape), (x, None)], [(out, x.shape)],
                                       params=[(gamma, c), (beta, c), (mean, c), (invstd, c)],
                                       half=_HALF)
        if dtype is None:
            return super().batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu=relu,
                                              out=out)
        n, c = x.shape
        k = self.kernels
        acc = COMPUTE_DTYPE[dtype]
        out = self._new_storage(x.shape, dtype) if out is None else out
        # dgamma/dbeta are added into the parameters' gradients at once: reused buffers
        dgamma = self.scratch("batchnorm_dgamma", (c,), acc)
        dbeta = self.scratch("batchnorm_dbeta", (c,), acc)
        scratch = self.scratch("batchnorm", k.batchnorm_scratch_shape(n, c), acc)
        with self._launch_scope():
            return k.batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu, out=out,
                                        dgamma=dgamma, dbeta=dbeta, scratch=scratch)

    # -- losses: every temporary in reused scratch, written with out= (same operations, in
    # the same order, as the base class's expressions)
    def _loss_outputs(self, like, grad_out, loss_out):
        grad = self._new(like.shape, _dtype_str(like)) if grad_out is None else grad_out
        loss = self._new((), _dtype_str(like)) if loss_out is None else loss_out
        return grad, loss

    def _elementwise_loss_takes(self, prediction, target, grad_out, loss_out):
        return (self.owns(prediction) and self.owns(target)
                and _dtype_str(prediction) in ("float32", "float64")
                and _dtype_str(target) == _dtype_str(prediction)
                and tuple(target.shape) == tuple(prediction.shape)
                and (grad_out is None or (self.owns(grad_out)
                                          and tuple(grad_out.shape) == tuple(prediction.shape)))
                and (loss_out is None or self.owns(loss_out)))

    def mse(self, prediction, target, scale, grad_out=None, loss_out=None):
        if not self._elementwise_loss_takes(prediction, target, grad_out, loss_out):
            return super().mse(prediction, target, scale, grad_out, loss_out)
        xp = self.xp
        grad, loss = self._loss_outputs(prediction, grad_out, loss_out)
        diff = self.scratch("mse_diff", prediction.shape, _dtype_str(prediction))
        xp.subtract(prediction, target, out=diff)
        xp.multiply(diff, 2.0 * scale, out=grad)
        xp.multiply(diff, diff, out=diff)
        xp.sum(diff, out=loss)
        xp.multiply(loss, scale, out=loss)
        return loss, grad

    def binary_cross_entropy(self, z, target, scale, grad_out=None, loss_out=None):
        if not self._elementwise_loss_takes(z, target, grad_out, loss_out):
            return super().binary_cross_entropy(z, target, scale, grad_out, loss_out)
        xp = self.xp
        dtype = _dtype_str(z)
        grad, loss = self._loss_outputs(z, grad_out, loss_out)
        terms = self.scratch("bce_terms", z.shape, dtype)
        if self._kernel_takes([(z, None), (target, z.shape)], [(grad, z.shape)]):
            # one pass for the terms and the gradient, then the sum: 3 launches, not 16
            with self._launch_scope():
                self.kernels.binary_xent_terms(z, target, scale, terms=terms, grad=grad)
            xp.sum(terms, out=loss)
            return xp.multiply(loss, scale, out=loss), grad
        e = self.scratch("bce_exp", z.shape, dtype)
        xp.abs(z, out=e)
        xp.negative(e, out=e)
        xp.exp(e, out=e)                       # e = exp(-|z|) <= 1: never overflows
        xp.maximum(z, 0, out=terms)
        xp.multiply(z, target, out=grad)       # grad holds z t for a moment
        xp.subtract(terms, grad, out=terms)
        xp.log1p(e, out=grad)
        xp.add(terms, grad, out=terms)         # max(z, 0) - z t + log1p(exp(-|z|))
        xp.sum(terms, out=loss)
        xp.multiply(loss, scale, out=loss)
        # sigmoid(z) = exp(min(z, 0)) / (1 + exp(-|z|)): the reference's two branches
        xp.minimum(z, 0, out=grad)
        xp.exp(grad, out=grad)
        xp.add(e, 1, out=e)
        xp.divide(grad, e, out=grad)
        xp.subtract(grad, target, out=grad)
        xp.multiply(grad, scale, out=grad)
        return loss, grad

    def _class_range(self, classes, dtype):
        """``[[0, 1, ..., classes - 1]]`` of ``dtype``, made once per (classes, dtype)."""
        ranges = self.__dict__.setdefault("_class_ranges", {})
        key = (classes, dtype, self._stream_key())
        if key not in ranges:
            ranges[key] = self.xp.arange(classes, dtype=self.dtype(dtype)).reshape(1, classes)
        return ranges[key]

    def hinge(self, prediction, labels, margin, scale, grad_out=None, loss_out=None):
        n, classes = prediction.shape
        if not (self._elementwise_loss_takes(prediction, prediction, grad_out, loss_out)
                and self.owns(labels) and tuple(labels.shape) == (n,)):
            return super().hinge(prediction, labels, margin, scale, grad_out, loss_out)
        xp = self.xp
        dtype = _dtype_str(prediction)
        grad, loss = self._loss_outputs(prediction, grad_out, loss_out)
        onehot = self.scratch("hinge_onehot", prediction.shape, dtype)
        margins = self.scratch("hinge_margins", prediction.shape, dtype)
        column = self.scratch("hinge_column", (n, 1), dtype)
        classes_range = self._class_range(classes, _dtype_str(labels))
        xp.equal(labels.reshape(n, 1), classes_range, out=onehot)
        xp.multiply(prediction, onehot, out=margins)
        xp.sum(margins, axis=1, keepdims=True, out=column)      # the correct class's score
        xp.subtract(prediction, column, out=margins)
        xp.add(margins, margin, out=margins)
        xp.maximum(margins, 0, out=margins)
        xp.subtract(1, onehot, out=grad)
        xp.multiply(margins, grad, out=margins)
        xp.greater(margins, 0, out=grad)                        # active terms, as 0/1
        xp.sum(grad, axis=1, keepdims=True, out=column)          # active terms per row
        xp.multiply(onehot, column, out=onehot)
        xp.subtract(grad, onehot, out=grad)
        xp.multiply(grad, scale, out=grad)
        xp.sum(margins, out=loss)
        xp.multiply(loss, scale, out=loss)
        return loss, grad

    def softmax_cross_entropy(self, logits, labels, loss_out=None):
        dtype = self._kernel_takes([(logits, None)], param_outputs=[(loss_out, ())],
                                   half=_ACTIVATION_HALF)
        if (dtype is None or logits.ndim != 2 or 0 in logits.shape
                or not self.owns(labels) or _dtype_str(labels) not in LABEL_DTYPES
                or tuple(labels.shape) != (logits.shape[0],)
                or not labels.flags.c_contiguous):
            loss, grad = super().softmax_cross_entropy(logits, labels)
            return self._into(loss_out, loss), grad
        k = self.kernels
        shape, scratch_dtype = k.softmax_cross_entropy_scratch(logits.shape[0], dtype)
        with self._launch_scope():
            # dL/dlogits is consumed by the next backward: reused from step to step
            return k.softmax_cross_entropy(
                logits, labels,
                loss=self._new((), COMPUTE_DTYPE[dtype]) if loss_out is None else loss_out,
                dlogits=self.scratch("dlogits", logits.shape, STORAGE_TYPE[dtype]),
                row_loss=self.scratch("softmax_cross_entropy", shape, scratch_dtype))

    # -- real 16-bit storage (mixed precision): casts into reused buffers
    def takes_half(self, op, dtype):
        """Whether ``op``'s kernels take 16-bit ``dtype`` storage (read at call time, so
        a family gaining a variant is picked up without other changes)."""
        table = {"activation": _ACTIVATION_HALF, "softmax_cross_entropy": _ACTIVATION_HALF,
                 "batchnorm": _HALF}
        return self.fused and dtype in table.get(op, ())

    def cast_storage(self, a, dtype, out=None):
        """See the base class; on the device with elementwise copies and the bfloat16
        rounding kernel into reused scratch: no allocation when ``out`` is given."""
        xp = self.xp
        source = self.storage_kind(a)
        if out is None:
            out = self._new(a.shape, self.storage_dtype(dtype))
        if source == dtype:
            xp.copyto(out, a)
        elif dtype == "bfloat16":
            if source != "float32":
                a = self.cast_storage(a, "float32",
                                      out=self.scratch("cast_wide", a.shape, "float32"))
            rounded = self.scratch("cast_bfloat16", a.shape, "float32")
            if self._kernel_takes([(a, None)], [(rounded, a.shape)]) == "float32":
                with self._launch_scope():
                    self.kernels.round_bfloat16(a, out=rounded)
            else:
                rounded[...] = super().round_to_precision(a, "bfloat16")
            # little-endian float32: the upper 16 bits are every second uint16
            xp.copyto(out.reshape(-1), rounded.reshape(-1).view(xp.uint16)[1::2])
        elif source == "bfloat16":
            wide = out if dtype == "float32" else self.scratch("cast_wide", a.shape,
                                                               "float32")
            bits = wide.view(xp.uint32)
            xp.copyto(bits, a)
            xp.left_shift(bits, 16, out=bits)
            if wide is not out:
                xp.copyto(out, wide, casting="same_kind")
        else:  # float32 <-> float16
            xp.copyto(out, a, casting="same_kind")
        return out

    def sum_rows_mixed(self, dy, out, overwrite=False):
        """See the base class: the column-sum kernel reads the 16-bit ``dy`` and adds in
        float32 (no widened copy) where it applies; else float16 is summed with a float32
        accumulator and bfloat16 widened into reused scratch first."""
        if dy.ndim == 2 and self._kernel_takes(
                [(dy, None)], param_outputs=[(out, (dy.shape[1],))], half=("float16", "bfloat16")):
            k = self.kernels
            scratch = self.scratch("column_sum", k.column_sum_scratch_shape(*dy.shape),
                                   "float32")
            with self._launch_scope():
                return k.column_sum(dy, out=out, scratch=scratch, accumulate=not overwrite)
        xp = self.xp
        if self.storage_kind(dy) == "bfloat16":
            dy = self.cast_storage(dy, "float32",
                                   out=self.scratch("sum_rows_wide", dy.shape, "float32"))
        if overwrite:
            return xp.sum(dy, axis=0, dtype=out.dtype, out=out)
        rows = self.scratch("sum_rows", out.shape, _dtype_str(out))
        xp.sum(dy, axis=0, dtype=out.dtype, out=rows)
        return xp.add(out, rows, out=out)

    # -- optimizer updates
    def sgd_update(self, param, grad, momentum_buffer, **hyper):
        needs_buffer = hyper.get("momentum", 0.0) != 0
        if (needs_buffer and momentum_buffer is None) or not self._update_takes(
                param, grad, momentum_buffer if needs_buffer else None):
            return super().sgd_update(param, grad, momentum_buffer, **hyper)
        with self._launch_scope():
            self.kernels.sgd_update(param, grad, momentum_buffer, **hyper)

    def adam_update(self, param, grad, exp_avg, exp_avg_sq, **hyper):
        if not self._update_takes(param, grad, exp_avg, exp_avg_sq):
            return super().adam_update(param, grad, exp_avg, exp_avg_sq, **hyper)
        with self._launch_scope():
            self.kernels.adam_update(param, grad, exp_avg, exp_avg_sq, **hyper)

    def rmsprop_update(self, param, grad, square_avg, momentum_buffer, grad_avg, **hyper):
        needs_buffer = hyper.get("momentum", 0.0) > 0
        centered = bool(hyper.get("centered", False))
        if ((needs_buffer and momentum_buffer is None) or (centered and grad_avg is None)
                or not self._update_takes(param, grad, square_avg,
                                          momentum_buffer if needs_buffer else None,
                                          grad_avg if centered else None)):
            return super().rmsprop_update(param, grad, square_avg, momentum_buffer, grad_avg,
                                          **hyper)
        with self._launch_scope():
            self.kernels.rmsprop_update(param, grad, square_avg, momentum_buffer, grad_avg,
                                        **hyper)

    def adagrad_update(self, param, grad, state_sum, **hyper):
        if not self._update_takes(param, grad, state_sum):
            return super().adagrad_update(param, grad, state_sum, **hyper)
        with self._launch_scope():
            self.kernels.adagrad_update(param, grad, state_sum, **hyper)

    def adadelta_update(self, param, grad, square_avg, acc_delta, **hyper):
        if not self._update_takes(param, grad, square_avg, acc_delta):
            return super().adadelta_update(param, grad, square_avg, acc_delta, **hyper)
        with self._launch_scope():
            self.kernels.adadelta_update(param, grad, square_avg, acc_delta, **hyper)

    def _trust_ratio_scratch(self, param, dtype):
        """The trust-ratio kernels and their reused ``partial``/``ratio`` scratch."""
        from ..kernels.trust_ratio import cuda as trust_ratio

        partial_shape, ratio_shape = trust_ratio.scratch_shapes(int(param.size))
        return (trust_ratio, self.scratch("trust_ratio_partial", partial_shape, dtype),
                self.scratch("trust_ratio", ratio_shape, dtype))

    def lars_update(self, param, grad, momentum_buffer, **hyper):
        if not self._update_takes(param, grad, momentum_buffer):
            return super().lars_update(param, grad, momentum_buffer, **hyper)
        with self._launch_scope():
            kernels, partial, ratio = self._trust_ratio_scratch(param, _dtype_str(param))
            kernels.lars_update(param, grad, momentum_buffer, partial=partial, ratio=ratio,
                                **hyper)

    def lamb_update(self, param, grad, exp_avg, exp_avg_sq, **hyper):
        if not self._update_takes(param, grad, exp_avg, exp_avg_sq):
            return super().lamb_update(param, grad, exp_avg, exp_avg_sq, **hyper)
        with self._launch_scope():
            kernels, partial, ratio = self._trust_ratio_scratch(param, _dtype_str(param))
            kernels.lamb_update(param, grad, exp_avg, exp_avg_sq, partial=partial,
                                ratio=ratio, **hyper)


    # -- LARS/LAMB over flat buffers: one segment per parameter, a fixed launch count
    def _segmented_scratch(self, param, offsets, adapt):
        """Kernels, the layout's device tables (copied once per layout) and the reused
        ``partial``/``ratio``/``found`` scratch of a segmented trust-ratio step."""
        from ..kernels.trust_ratio import cuda as trust_ratio

        tables = self.__dict__.setdefault("_segment_tables", {})
        key = (tuple(offsets), tuple(adapt))
        device_tables = tables.get(key)
        if device_tables is None:
            device_tables = tables[key] = tuple(
                self.xp.asarray(t) for t in trust_ratio.segment_layout(offsets, adapt))
        chunks, segments = device_tables
        dtype = _dtype_str(param)
        partial_shape, ratio_shape, found_shape = trust_ratio.segmented_scratch_shapes(
            chunks, segments)
        return (trust_ratio, chunks, segments,
                self.scratch("trust_ratio_segmented_partial", partial_shape, dtype),
                self.scratch("trust_ratio_segmented", ratio_shape, dtype),
                self.scratch("trust_ratio_found", found_shape, "int32"))

    def _segmented_takes(self, offsets, param, grad, *state):
        return (len(param.shape) == 1 and len(offsets) >= 2
                and int(offsets[-1]) == int(param.shape[0])
                and self._update_takes(param, grad, *state))

    def lars_update_segmented(self, param, grad, momentum_buffer, *, offsets, adapt,
                              **hyper):
        """In-place LARS over flat buffers, one local rate per segment (see
        :func:`dualnn.kernels.trust_ratio.reference.lars_update_segmented`); three launches
        whatever the number of segments.

        Parameters
        ----------
        param, grad, momentum_buffer : array (total,)
        offsets : sequence of int (n + 1,)
        adapt : sequence of bool (n,)
        """
        if not self._segmented_takes(offsets, param, grad, momentum_buffer):
            from ..kernels.trust_ratio import reference

            p, b = reference.lars_update_segmented(self.xp, param, grad, momentum_buffer,
                                                   offsets=offsets, adapt=adapt, **hyper)
            param[...] = p
            momentum_buffer[...] = b
            return
        with self._launch_scope():
            kernels, chunks, segments, partial, ratio, found = self._segmented_scratch(
                param, offsets, adapt)
            kernels.lars_update_segmented(param, grad, momentum_buffer, chunks=chunks,
                                          segments=segments, partial=partial, ratio=ratio,
                                          found=found, **hyper)

    def lamb_update_segmented(self, param, grad, exp_avg, exp_avg_sq, *, offsets, adapt,
                              inv_scale=None, found_inf=None, skipped=None, **hyper):
        """In-place LAMB over flat buffers, one trust ratio per segment (see
        :func:`dualnn.kernels.trust_ratio.reference.lamb_update_segmented`); three launches
        whatever the number of segments.

        Parameters
        ----------
        param, grad, exp_avg, exp_avg_sq : array (total,)
        offsets : sequence of int (n + 1,)
        adapt : sequence of bool (n,)
        inv_scale : array (1,) of ``param``'s dtype, optional
            A loss scaler's ``1 / scale``: the step uses ``grad * inv_scale`` (``grad`` is
            not written).
        found_inf : int32 array (1,), optional
            Set to 1 when a scaled gradient is NaN/inf; while it is nonzero (on entry or
            after the check) parameters and moments are left unchanged.
        skipped : int32 array (1,), optional
            Steps a loss scaler skipped so far: the bias corrections use
            ``step - skipped[0]`` (no host read).
        """
        if found_inf is not None and (not self.owns(found_inf) or _dtype_str(found_inf)
                                      != "int32" or tuple(found_inf.shape) != (1,)):
            raise TypeError(f"lamb_update_segmented: found_inf must be an int32 array of "
                            f"shape (1,) on this device, got {type(found_inf).__name__} "
                            f"{getattr(found_inf, 'dtype', None)} "
                            f"{tuple(getattr(found_inf, 'shape', ()))}")
        if not self._segmented_takes(offsets, param, grad, exp_avg, exp_avg_sq):
            from ..kernels.trust_ratio import reference

            p, m, v, found = reference.lamb_update_segmented(
                self.xp, param, grad, exp_avg, exp_avg_sq, offsets=offsets, adapt=adapt,
                inv_scale=inv_scale, found_inf=found_inf, skipped=skipped, **hyper)
            param[...] = p
            exp_avg[...] = m
            exp_avg_sq[...] = v
            if found_inf is not None:
                found_inf[...] = self.xp.astype(found, found_inf.dtype)
            return
        with self._launch_scope():
            kernels, chunks, segments, partial, ratio, found = self._segmented_scratch(
                param, offsets, adapt)
            kernels.lamb_update_segmented(
                param, grad, exp_avg, exp_avg_sq, chunks=chunks, segments=segments,
                partial=partial, ratio=ratio, found=found if found_inf is None else found_inf,
                inv_scale=inv_scale, check_finite=found_inf is not None, skipped=skipped,
                **hyper)


class CupyBackend(CudaKernelOps, ArrayAPIBackend):
    """CuPy on one NVIDIA GPU.

    Fused ops run the Numba-CUDA kernels of :mod:`dualnn.kernels.cuda` on CuPy's current
    stream (float32/float64, C-contiguous; anything else runs the reference math on CuPy).
    Kernels compile on their first launch, or all at once with ``precompile=True``.

    Parameters
    ----------
    device_id : int
        CUDA device ordinal.
    fused : bool, optional
        Use the Numba-CUDA kernels; default from ``DUALNN_FUSED`` (on).
    precompile : bool
        Compile every kernel for float32 and float64 now. Otherwise the kernels of a
        dtype compile when the first parameter of that dtype is created on or moved to
        this backend (:meth:`prepare_dtype`), never inside a training step.
    tf32 : bool
        Let float32 matrix products use TensorFloat-32 tensor cores (10-bit mantissa
        inputs, float32 accumulation; faster on Ampere and later, less precise). Off
        by default; settable later as ``backend.tf32``.
    """

    def __init__(self, device_id=0, fused=None, precompile=False, tf32=False):
        import cupy

        self.cupy = cupy
        self.device_id = int(device_id)
        self.tf32 = bool(tf32)
        self._prepared = set()
        super().__init__(cupy, name="cupy", device=f"gpu:{self.device_id}")
        self.fused = fused_kernels_enabled() if fused is None else bool(fused)
        self.reuses_buffers = True  # models may keep per-step scratch arrays
        self.flat_parameters = True  # elementwise optimizers pack parameters: one launch
        self._init_kernel_ops()
        with cupy.cuda.Device(self.device_id):
            self._rng = cupy.random.default_rng()
            if precompile and self.fused:
                self.kernels.precompile()

    def _stream_key(self):
        return self.cupy.cuda.get_current_stream().ptr

    def _launch_scope(self):
        return self.cupy.cuda.Device(self.device_id)

    def owns(self, a):
        return isinstance(a, self.cupy.ndarray) and a.device.id == self.device_id

    def asarray(self, a, dtype=None):
        with self.cupy.cuda.Device(self.device_id):
            if dtype is not None:
                dtype = self.dtype(dtype)
            if not isinstance(a, self.cupy.ndarray) and is_dlpack_foreign(a):
                a = self.from_dlpack(a)  # a CUDA tensor on this device: no host round trip
            if isinstance(a, self.cupy.ndarray):
                return self.cupy.ascontiguousarray(a, dtype=dtype)
            return self.cupy.ascontiguousarray(self.cupy.asarray(np.asarray(a), dtype=dtype))

    def from_dlpack(self, a):
        with self.cupy.cuda.Device(self.device_id):
            return super().from_dlpack(a)

    def matmul(self, a, b, out=None):
        with self.cupy.cuda.Device(self.device_id), self._gemm_precision(a):
            return self.cupy.matmul(a, b, out=out)

    half_storage = property(lambda self: self.fused, doc="""Mixed precision passes real
        16-bit arrays between layers when the fused kernels are on.""")

    def matmul_mixed(self, a, b, out, transpose_a=False, transpose_b=False,
                     accumulate=False):
        """See the base class: one ``cublasGemmEx`` call, 16-bit A/B, float32 or 16-bit C,
        ``CUBLAS_COMPUTE_32F`` (float32 products and sums whatever CuPy's own half
        setting is); writes ``out`` in place and allocates nothing."""
        cupy = self.cupy
        kind = self.storage_kind(a)
        m, k = (a.shape[1], a.shape[0]) if transpose_a else a.shape
        n = b.shape[0] if transpose_b else b.shape[1]
        if (kind == "float32" or self.storage_kind(b) != kind or out.shape != (m, n)
                or (b.shape[1] if transpose_b else b.shape[0]) != k
                or self.storage_kind(out) not in ("float32", kind)
                or not all(x.flags.c_contiguous for x in (a, b, out))):
            raise ShapeError(
                f"matmul_mixed: expected C-contiguous 16-bit a {tuple(a.shape)} and b "
                f"{tuple(b.shape)} of one type ({_dtype_str(a)}, {_dtype_str(b)}) and out "
                f"{(m, n)} float32 or {_dtype_str(a)}, got out {tuple(out.shape)} "
                f"{_dtype_str(out)}")
        cublas, runtime = cupy.cuda.cublas, cupy.cuda.runtime
        types = {"float16": runtime.CUDA_R_16F, "bfloat16": runtime.CUDA_R_16BF,
                 "float32": runtime.CUDA_R_32F}
        scalars = self.__dict__.get("_gemm_scalars")
        if scalars is None:  # host alpha/beta (float32: the compute type's scalars)
            scalars = self._gemm_scalars = np.array([1.0, 0.0], dtype=np.float32)
        alpha = scalars.ctypes.data
        beta = alpha + (0 if accumulate else scalars.itemsize)
        # cuBLAS is column-major: the row-major C = op(A) op(B) is C^T = op(B)^T op(A)^T,
        # and a row-major matrix read column-major is its transpose.
        with cupy.cuda.Device(self.device_id):
            if m and n:
                cublas.gemmEx(
                    cupy.cuda.device.get_cublas_handle(),
                    cublas.CUBLAS_OP_T if transpose_b else cublas.CUBLAS_OP_N,
                    cublas.CUBLAS_OP_T if transpose_a else cublas.CUBLAS_OP_N,
                    n, m, k, alpha, b.data.ptr, types[kind], b.shape[1], a.data.ptr,
                    types[kind], a.shape[1], beta, out.data.ptr,
                    types[self.storage_kind(out)], n, cublas.CUBLAS_COMPUTE_32F,
                    cublas.CUBLAS_GEMM_DEFAULT)
        return out

    @contextlib.contextmanager
    def _gemm_precision(self, a):
        """TF32 compute for float32 products while ``self.tf32`` (CuPy's GEMM setting is
        process-wide: set around the call and put back)."""
        if not self.tf32 or _dtype_str(a) != "float32":
            yield
            return
        linalg = self.cupy._core._routines_linalg
        previous = linalg.get_compute_type(np.dtype("float32"))
        linalg.set_compute_type(linalg.COMPUTE_TYPE_TF32)
        try:
            yield
        finally:
            linalg.set_compute_type(previous)

    def prepare_dtype(self, dtype):
        """Compile every fused kernel for ``dtype`` once (no-op when not fused).

        Called when a parameter of that dtype is created on or moved to this backend,
        so the first training step launches compiled kernels.
        """
        dtype = dtype_name(dtype)
        if not self.fused or dtype in self._prepared or dtype not in ("float32", "float64"):
            return
        self._prepared.add(dtype)
        with self.cupy.cuda.Device(self.device_id):
            self.kernels.precompile((dtype,))

    def kernel_cache(self):
        """``{dtype: number of compiled CUDA kernels}`` in this process."""
        counts = {}
        for family in self.kernels.FAMILIES.values():
            for key in family._compiled:
                counts[key[1]] = counts.get(key[1], 0) + 1
        return counts

    def to_host(self, a):
        if isinstance(a, self.cupy.ndarray):
            return self.cupy.asnumpy(a)
        return np.asarray(a)

    def synchronize(self):
        self.cupy.cuda.Device(self.device_id).synchronize()

    def free_device_bytes(self):
        with self.cupy.cuda.Device(self.device_id):
            free, _ = self.cupy.cuda.runtime.memGetInfo()
            pool = self.cupy.get_default_memory_pool()
            return int(free) + int(pool.total_bytes()) - int(pool.used_bytes())

    def copy_to_device(self, host, out):
        with self.cupy.cuda.Device(self.device_id):
            out.set(np.ascontiguousarray(host, dtype=_dtype_str(out)))
        return out

    def seed(self, seed):
        super().seed(seed)
        with self.cupy.cuda.Device(self.device_id):
            self._rng = self.cupy.random.default_rng(seed)

    def random_uniform(self, shape, dtype="float32", out=None):
        """Uniform samples in [0, 1); ``out`` (C-contiguous, of ``shape``/``dtype``)
        receives them without a new array (CuPy's generator draws the same values)."""
        with self.cupy.cuda.Device(self.device_id):
            if out is not None and self.owns(out) and out.flags.c_contiguous and (
                    tuple(out.shape) == tuple(shape) and _dtype_str(out) == dtype_name(dtype)):
                return self._rng.random(shape, dtype=dtype_name(dtype), out=out)
            return self._into(out, self._rng.random(shape, dtype=dtype_name(dtype)))
