"""The generic backend: any Array API namespace, fused ops computed by the reference math.

A :class:`Backend` is everything layers, losses and optimizers may touch: the array
namespace ``xp``, host <-> device transfer, a seeded random generator, and the fused-op
entry points (activation forward/backward, batch normalization, softmax cross-entropy,
optimizer updates). :class:`ArrayAPIBackend` implements every op with
:mod:`dualnn.kernels.reference`; the NumPy and CuPy backends override the ops that have
a fused kernel, for the dtypes and layouts the kernel supports, and fall back here
otherwise.

Conventions of the op methods
-----------------------------
- ``out=`` (where offered) is a preallocated array of the result's shape and dtype; the
  result is written into it and returned. It may be the same array as an input of the
  same shape (in-place backward).
- Optimizer updates write the new parameter and state into the arrays they are given.
- Batch-norm training forward updates ``running_mean`` and ``running_var`` in place.
"""

from __future__ import annotations

import weakref

import numpy as np

from ..errors import ConfigurationError
from ..kernels import reference
from ..kernels.cast import reference as cast_reference
from ..kernels.ops import FLOAT_DTYPES  # noqa: F401 - the one table, re-exported

_live_backends = weakref.WeakSet()
_global_seed = [None]


def seed_all(seed):
    """Seed every backend alive now and make later ones start from ``seed``."""
    _global_seed[0] = seed
    for backend in list(_live_backends):
        backend.seed(seed)


def is_dlpack_foreign(a):
    """True for an array of another library that exports ``__dlpack__`` (NumPy arrays,
    which every backend reads directly, excluded)."""
    return hasattr(a, "__dlpack__") and not isinstance(a, np.ndarray)


class ArrayAPIBackend:
    """Backend for any Array API namespace; every op runs the reference math.

    Parameters
    ----------
    xp : module
        An Array API namespace (``numpy``, ``cupy``, ``array_api_strict``, ...).
    name : str, optional
        Short name; defaults to the namespace's module name.
    device : str, optional
        Device string reported to users (``"cpu"``, ``"gpu:0"``).

    Notes
    -----
    Random numbers are drawn on the host with a NumPy generator and moved, because the
    Array API has no random module. Subclasses with a device generator override
    :meth:`random_uniform`.
    """

    def __init__(self, xp, name=None, device="cpu"):
        self.xp = xp
        self.name = name or getattr(xp, "__name__", "array_api")
        self.device = device
        self.fused = False
        self.reuses_buffers = False
        self._host_rng = np.random.default_rng(_global_seed[0])
        _live_backends.add(self)

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, device={self.device!r})"

    # ------------------------------------------------------------------ arrays
    flat_parameters = False
    """Whether elementwise optimizers pack parameters, gradients and state into flat
    buffers on this backend (see :class:`~dualnn.parameter.FlatParameters`)."""

    def dtype(self, name):
        """The namespace's dtype object for ``"float32"``/``"float64"`` (or an int name)."""
        name = dtype_name(name)
        try:
            return getattr(self.xp, name)
        except AttributeError:
            raise ConfigurationError(f"{self.name} has no dtype {name!r}") from None

    def owns(self, a):
        """True when ``a`` is an array of this backend's namespace (and device)."""
        get_ns = getattr(a, "__array_namespace__", None)
        if get_ns is None:
            return False
        try:
            return get_ns() is self.xp
        except Exception:  # namespaces that reject the call for this array type
            return False

    def from_dlpack(self, a):
        """``a`` (any object with ``__dlpack__``: a PyTorch tensor, a NumPy, CuPy or JAX
        array) as an array of this backend, sharing its memory when it lives on this
        backend's device; otherwise copied here through host memory.

        Raises
        ------
        ConfigurationError
            The producer refuses the export (e.g. a PyTorch tensor that requires grad:
            pass ``tensor.detach()``) or it cannot reach this device.
        """
        try:
            return self.xp.from_dlpack(a)
        except (BufferError, RuntimeError, TypeError, ValueError) as exc:
            first = exc
        if "grad" in str(first):
            raise ConfigurationError(f"{type(a).__name__} refused the DLPack export ({first}); "
                                     "pass tensor.detach()") from None
        try:  # another device: through host memory
            host = np.from_dlpack(a, device="cpu", copy=None)
        except (BufferError, RuntimeError, TypeError, ValueError):
            raise ConfigurationError(f"cannot import a {type(a).__name__} into {self.name} "
                                     f"through DLPack ({first})") from None
        return self.asarray(host)

    def asarray(self, a, dtype=None):
        """Copy or move ``a`` (host array, list, scalar, own array, or any ``__dlpack__``
        array such as a PyTorch tensor) onto this device; own arrays and DLPack arrays on
        this device are not copied unless a cast is asked for."""
        if dtype is not None:
            dtype = self.dtype(dtype)
        if not self.owns(a) and is_dlpack_foreign(a):
            a = self.from_dlpack(a)
        if self.owns(a):
            return a if dtype is None or a.dtype == dtype else self.xp.astype(a, dtype)
        host = np.asarray(a)
        return self.xp.asarray(host, dtype=dtype, copy=True) if dtype is not None \
            else self.xp.asarray(host, copy=True)

    def to_host(self, a):
        """A NumPy copy of ``a`` (an array of this backend, or anything NumPy accepts)."""
        if isinstance(a, np.ndarray):
            return a
        if self.owns(a):
            return np.asarray(_to_numpy(self.xp, a))
        return np.asarray(a)

    def zeros(self, shape, dtype="float32"):
        return self.xp.zeros(shape, dtype=self.dtype(dtype))

    def empty(self, shape, dtype="float32"):
        return self.xp.empty(shape, dtype=self.dtype(dtype))

    def zeros_like(self, a):
        """Zeros with ``a``'s shape and dtype, allocated like :meth:`zeros`."""
        return self.zeros(tuple(a.shape), dtype_name(a.dtype))

    def store(self, a, dtype=None):
        """A new array on this device holding ``a``'s values, for long-lived data.

        Parameters, gradients and optimizer state are allocated through this (and
        :meth:`zeros_like`) so a backend can place them where its kernels stream fastest
        (the NumPy backend aligns large ones to huge pages). Never returns ``a`` itself.
        """
        array = self.asarray(a, dtype)
        return self.copy(array) if array is a else array

    def copy(self, a):
        return self.xp.asarray(a, copy=True)

    def assign(self, dst, src):
        """Write ``src`` into ``dst`` in place (same shape)."""
        dst[...] = src
        return dst

    def matmul(self, a, b, out=None):
        """``a @ b``, written into ``out`` when given."""
        return self._into(out, a @ b)

    def matmul_accumulate(self, a, b, out, overwrite=False):
        """``out += a @ b`` (``out = a @ b`` when ``overwrite``); returns ``out``."""
        if overwrite:
            return self.matmul(a, b, out=out)
        out += a @ b
        return out

    def synchronize(self):
        """Wait until all queued work on the device has finished (no-op on the CPU)."""

    def all_finite(self, a):
        """True when every element of ``a`` is finite (reads one value back to the host)."""
        return bool(self.xp.all(self.xp.isfinite(a)))

    def item(self, a):
        """A Python float from a 0-d or one-element array."""
        return float(self.to_host(a).reshape(()))

    # ------------------------------------------------------------------ device-side checks
    # These keep a check's result on the device (no host read) or read it once for many
    # arrays; the GPU backend overrides them with allocation-free versions.
    def scratch(self, tag, shape, dtype):
        """A buffer for ``tag`` of ``shape``/``dtype``, reused by later calls (contents undefined)."""
        buffers = self.__dict__.setdefault("_scratch_buffers", {})
        key = (tag, tuple(shape), dtype_name(dtype))
        buf = buffers.get(key)
        if buf is None:
            buf = buffers[key] = self.empty(tuple(shape), dtype)
        return buf

    def update_label_range(self, labels, bounds):
        """Widen ``bounds`` to cover ``labels``, on the device (no host read).

        Parameters
        ----------
        labels : int array (n,), n >= 1
        bounds : int64 array (2,)
            Running ``[min, max]`` of every label seen; updated in place.
        """
        xp = self.xp
        low = xp.astype(xp.min(labels), bounds.dtype)
        high = xp.astype(xp.max(labels), bounds.dtype)
        bounds[0:1] = xp.minimum(bounds[0:1], xp.reshape(low, (1,)))
        bounds[1:2] = xp.maximum(bounds[1:2], xp.reshape(high, (1,)))
        return bounds

    def nonfinite_index(self, arrays):
        """Position of the first array in ``arrays`` holding a NaN or inf, or -1.

        Reads the finiteness of all of them back to the host at once (one sync on a GPU).
        """
        for i, a in enumerate(arrays):
            if not self.all_finite(a):
                return i
        return -1

    def grad_check_finite(self, grads, found_inf, inv_scale=None):
        """Set ``found_inf`` when a gradient holds NaN or inf, on the device (no host read).

        The loss scaler's finite check (and, with ``inv_scale``, its write-back unscale).

        Parameters
        ----------
        grads : sequence of arrays, any shapes
            With ``inv_scale``, each is multiplied by ``inv_scale[0]`` in place.
        found_inf : int32 array (1,)
            Set to 1 when a gradient is not finite; never cleared here.
        inv_scale : float array (1,), optional
        """
        xp = self.xp
        for g in grads:
            bad = xp.logical_not(xp.all(xp.isfinite(g)))
            found_inf[...] = xp.where(bad, xp.ones_like(found_inf), found_inf)
            if inv_scale is not None:
                g[...] = g * xp.reshape(xp.astype(inv_scale, g.dtype), ())

    def loss_scale_update(self, scale, inv_scale, growth_tracker, found_inf, *, growth_factor,
                          backoff_factor, growth_interval, counters=()):
        """``GradScaler``'s scale update on 1-element device arrays, in place.

        After an overflow (``found_inf[0] != 0``) the scale is multiplied by
        ``backoff_factor`` and the tracker reset; otherwise the tracker counts a clean step
        and, on reaching ``growth_interval``, the scale grows by ``growth_factor`` and the
        tracker restarts at 0. Then ``inv_scale = 1 / scale``, each of ``counters`` (int32
        (1,)) is incremented by the flag, and ``found_inf`` is cleared. No host read.

        Parameters
        ----------
        scale, inv_scale : float arrays (1,)
        growth_tracker, found_inf : int32 arrays (1,)
        growth_factor, backoff_factor : float
        growth_interval : int
        counters : sequence of int32 arrays (1,)
            Skip counters of the optimizers stepped with this flag.
        """
        xp = self.xp
        found = found_inf != 0
        for c in counters:
            c[...] = c + xp.astype(found, c.dtype)
        clean = growth_tracker + 1
        grow = xp.logical_and(xp.logical_not(found), clean == int(growth_interval))

        def const(v, like):
            return xp.full(like.shape, v, dtype=like.dtype)

        factor = xp.where(found, const(backoff_factor, scale),
                          xp.where(grow, const(growth_factor, scale), const(1.0, scale)))
        scale[...] = scale * factor
        growth_tracker[...] = xp.where(xp.logical_or(found, grow),
                                       const(0, growth_tracker), clean)
        inv_scale[...] = const(1.0, scale) / scale
        found_inf[...] = const(0, found_inf)

    def sum_of_squares(self, arrays, out):
        """Write ``sum_a sum(a * a)`` over all ``arrays`` into the 0-d ``out`` (no host read)."""
        xp = self.xp
        total = None
        for a in arrays:
            part = xp.astype(xp.sum(a * a), out.dtype)
            total = part if total is None else total + part
        out[...] = total if total is not None else xp.zeros((), dtype=out.dtype)
        return out

    def clip_factor(self, total, max_norm, eps):
        """In place: ``total`` (a 0-d sum of squares) becomes ``min(1, max_norm / (sqrt(total)
        + eps))``, the gradient-clipping factor, on the device."""
        xp = self.xp
        total[...] = xp.minimum(max_norm / (xp.sqrt(total) + eps),
                                xp.ones((), dtype=total.dtype))
        return total

    def prepare_dtype(self, dtype):
        """Get ready to run ``dtype`` arrays (the GPU backend compiles its kernels)."""

    def free_device_bytes(self):
        """Free memory of this backend's device in bytes, or None for host memory."""
        return None

    def copy_to_device(self, host, out):
        """Copy the host array ``host`` into the existing device array ``out``."""
        out[...] = self.asarray(host, dtype_name(out.dtype))
        return out

    def add_l1_into(self, grad, data, l1, out):
        """``out = grad + l1 * sign(data)`` (the L1 penalty's gradient added), in place."""
        out[...] = grad + l1 * self.xp.sign(data)
        return out

    def max_norm_rows(self, data, max_norm):
        """Rescale each row (first axis) of ``data`` in place to an L2 norm <= ``max_norm``;
        rows within the bound are multiplied by exactly 1."""
        xp = self.xp
        axes = tuple(range(1, data.ndim))
        norms = xp.sqrt(xp.sum(data * data, axis=axes, keepdims=True))
        # Bounds by position: CuPy's clip names them a_min/a_max, the Array API min/max.
        factor = max_norm / xp.clip(norms, max_norm, None)
        return self.assign(data, data * factor)

    def sum_rows_into(self, dy, out, overwrite=False):
        """``out += dy.sum(axis=0)`` (``out = ...`` when ``overwrite``): a bias gradient."""
        total = self.xp.sum(dy, axis=0)
        if overwrite:
            out[...] = total
        else:
            out += total
        return out

    def column_sums2(self, a, b, out=None):
        """``(n, c), (n, c) -> (2 c,)``: ``out[:c] = a.sum(axis=0)`` and
        ``out[c:] = (a * b).sum(axis=0)`` (batch norm's ``sum dy`` and ``sum dy * xhat``).

        ``out`` is an optional ``(2 c,)`` buffer of ``a``'s dtype written in place (a layer
        keeps one so a step allocates nothing). Returns ``out`` (a new array without it).
        """
        xp = self.xp
        total = xp.concat([xp.sum(a, axis=0), xp.sum(a * b, axis=0)])
        if out is None:
            return total
        out[...] = total
        return out

    def accumulate(self, total, value, weight=1):
        """``total + value * weight`` for running sums on the device (``total`` None
        starts one); the GPU backend adds in place into ``total``, allocating nothing."""
        term = value * weight if weight != 1 else value
        return term if total is None else total + term

    def count_correct(self, scores, labels, total=None):
        """Running count of rows whose argmax of ``scores`` (n, k) equals ``labels`` (n,),
        as a 0-d int64 device array (``total`` None starts one); no host read."""
        xp = self.xp
        hits = xp.sum(xp.astype(xp.argmax(scores, axis=1) == labels, xp.int64))
        return hits if total is None else total + hits

    def multiply_into(self, a, b, out):
        """``out = a * b`` elementwise (``out`` may be ``a``); returns ``out``."""
        out[...] = a * b
        return out

    def scale_into(self, a, factor, out):
        """``out = a * factor`` (``factor`` a scalar or 0-d array), in place; returns ``out``."""
        out[...] = a * factor
        return out

    # ------------------------------------------------------------------ randomness
    def seed(self, seed):
        """Seed this backend's generator."""
        self._host_rng = np.random.default_rng(seed)

    @property
    def host_rng(self):
        """The NumPy generator used for host-side draws (initial weights, shuffling)."""
        return self._host_rng

    def random_uniform(self, shape, dtype="float32", out=None):
        """Uniform samples in [0, 1) on this device, written into ``out`` when given (the
        same draws either way)."""
        host = self._host_rng.random(shape, dtype=np.dtype(dtype_name(dtype)))
        return self._into(out, self.asarray(host))

    def dropout_mask(self, shape, dtype, p, out=None):
        """Inverted-dropout mask: ``(u >= p) / (1 - p)`` for ``u`` uniform in [0, 1) drawn
        by :meth:`random_uniform` (the same draws), written into ``out`` when given."""
        keep = self.random_uniform(shape, dtype) >= p
        return self._into(out, self.xp.astype(keep, self.dtype(dtype)) * (1 / (1 - p)))

    def get_rng_state(self):
        """JSON-serializable generator state (for checkpoints)."""
        return self._host_rng.bit_generator.state

    def set_rng_state(self, state):
        self._host_rng.bit_generator.state = state

    # ------------------------------------------------------------------ activation ops
    def _into(self, out, result):
        if out is None:
            return result
        out[...] = result
        return out

    def activation_forward(self, kind, z, alpha=0.0, out=None):
        """``act(z)`` elementwise; see :func:`dualnn.kernels.reference.activation_forward`."""
        if _bits(z):  # bfloat16 bit patterns: the reference math runs on float32 values
            return self.cast_storage(self.activation_forward(
                kind, self.cast_storage(z, "float32"), alpha), "bfloat16", out=out)
        return self._into(out, reference.activation_forward(self.xp, kind, z, alpha))

    def bias_activation_forward(self, z, b, kind, alpha=0.0, out=None):
        """``act(z + b)``; ``out`` may be ``z`` itself (in place after the GEMM)."""
        if _bits(z):
            return self.cast_storage(self.bias_activation_forward(
                self.cast_storage(z, "float32"), b, kind, alpha), "bfloat16", out=out)
        return self._into(out, reference.bias_activation_forward(self.xp, z, b, kind, alpha))

    def activation_backward(self, kind, dy, saved, alpha=0.0, out=None):
        """``dy * f'(.)``; ``saved`` is the input (relu family, elu) or output (sigmoid, tanh)."""
        if _bits(dy) or _bits(saved):
            wide = [self.cast_storage(a, "float32") if _bits(a) else a for a in (dy, saved)]
            return self.cast_storage(self.activation_backward(kind, *wide, alpha),
                                     "bfloat16", out=out)
        return self._into(out, reference.activation_backward(self.xp, kind, dy, saved, alpha))

    def sigmoid(self, z):
        """Overflow-free logistic function."""
        return reference.sigmoid(self.xp, z)

    def one_hot(self, labels, classes, dtype):
        """``(n, classes)`` indicator array of integer ``labels``."""
        return reference.one_hot(self.xp, labels, classes, self.dtype(dtype_name(dtype)))

    # ------------------------------------------------------------------ batch norm
    def batchnorm_forward_train(self, x, gamma, beta, running_mean, running_var, eps,
                                momentum, relu=False, out=None, stats_out=None):
        """Training-mode batch norm; returns ``(y, mean, invstd)``, updates running stats.

        ``stats_out`` is an optional ``(mean, invstd)`` pair of ``(features,)`` arrays
        (of a previous call's dtype) the batch statistics are written into, so a layer can
        keep them in the same two arrays from step to step.
        """
        y, mean, invstd, rm, rv = reference.batchnorm_forward_train(
            self.xp, x, gamma, beta, running_mean, running_var, eps, momentum, relu)
        running_mean[...] = rm
        running_var[...] = rv
        if stats_out is not None:
            mean, invstd = self._into(stats_out[0], mean), self._into(stats_out[1], invstd)
        return self._into(out, y), mean, invstd

    def batchnorm_forward_eval(self, x, gamma, beta, running_mean, running_var, eps,
                               relu=False, out=None):
        """Inference-mode batch norm with the running statistics."""
        y = reference.batchnorm_forward_eval(self.xp, x, gamma, beta, running_mean,
                                             running_var, eps, relu)
        return self._into(out, y)

    def batchnorm_backward(self, dy, x, gamma, beta, mean, invstd, relu=False, out=None):
        """Returns ``(dx, dgamma, dbeta)``; ``out`` receives ``dx`` (may be ``dy``)."""
        dx, dgamma, dbeta = reference.batchnorm_backward(self.xp, dy, x, gamma, beta, mean,
                                                         invstd, relu)
        return self._into(out, dx), dgamma, dbeta

    # ------------------------------------------------------------------ 16-bit storage
    def round_to_precision(self, a, dtype):
        """``a`` (float32, any shape) rounded to ``dtype`` precision, as a new float32 array.

        ``dtype`` is ``"float16"`` (IEEE, overflow to inf) or ``"bfloat16"`` (nearest,
        ties to even). Mixed-precision training stores activations and gradients this way
        on devices that compute in float32 (see :mod:`dualnn.training.mixed_precision`).
        """
        with np.errstate(over="ignore"):
            return cast_reference.round_to(self.xp, a, dtype)

    # ------------------------------------------------------------------ real 16-bit storage
    # Mixed precision on a backend with ``half_storage`` keeps activations and gradients
    # in 16-bit arrays: float16 as float16, bfloat16 as uint16 bit patterns (the upper
    # 16 bits of a float32, what the CUDA kernels take). These ops are the whole
    # vocabulary of that path; here they compute in float32 with the array library
    # (the reference twin of the GPU's cuBLAS and kernel versions).
    half_storage = False
    """Whether :class:`~dualnn.training.mixed_precision.PrecisionRunner` passes real
    16-bit arrays between layers on this backend (the CuPy backend with fused kernels);
    otherwise mixed precision rounds float32 arrays (``round_to_precision``)."""

    def storage_dtype(self, dtype):
        """Array dtype name holding ``dtype`` values: ``"float16"``, ``"uint16"`` for
        ``"bfloat16"`` (bit patterns), ``"float32"``."""
        return _STORAGE[dtype]

    def storage_kind(self, a):
        """``"float16"``, ``"bfloat16"`` (a uint16 array) or ``"float32"``: what ``a`` holds."""
        name = dtype_name(a.dtype)
        kind = _KIND_OF_STORAGE.get(name)
        if kind is None:
            raise ConfigurationError(f"{self.name}: expected float32, float16 or bfloat16 "
                                     f"(uint16 bits) storage, got {name}")
        return kind

    def takes_half(self, op, dtype):
        """Whether the fused kernels of ``op`` (``"activation"``, ``"batchnorm"``,
        ``"softmax_cross_entropy"``) take 16-bit ``dtype`` storage directly."""
        return False

    def cast_storage(self, a, dtype, out=None):
        """``a`` (float32, float16 or bfloat16 bits) converted to ``dtype`` storage.

        Parameters
        ----------
        a : array, any shape
        dtype : {"float32", "float16", "bfloat16"}
            float16: IEEE round to nearest even (inf beyond 65504); bfloat16: nearest,
            ties to even, written as uint16 bit patterns; float32: exact widening.
        out : array of ``a``'s shape and ``storage_dtype(dtype)``, optional
            Written into and returned (a reused buffer); else a new array.
        """
        xp = self.xp
        source = self.storage_kind(a)
        if out is None:
            out = self.empty(tuple(a.shape), self.storage_dtype(dtype))
        if source == dtype:
            out[...] = a
            return out
        if source == "bfloat16":  # bits -> float32, then on to float16 if asked
            wide = self._widen_bfloat16(a)
            if dtype == "float32":
                out[...] = wide
                return out
            a = wide
        if dtype == "bfloat16":
            rounded = self.round_to_precision(xp.astype(a, xp.float32), "bfloat16")
            out[...] = xp.astype(xp.reshape(rounded, (-1,)).view(xp.uint32) >> 16,
                                 xp.uint16).reshape(tuple(a.shape))
            return out
        with np.errstate(over="ignore"):  # beyond float16's range: inf, as on a GPU
            out[...] = xp.astype(a, self.dtype(dtype))
        return out

    def _widen_bfloat16(self, bits):
        xp = self.xp
        wide = xp.astype(bits, xp.uint32) << 16
        return wide.view(xp.float32)

    def matmul_mixed(self, a, b, out, transpose_a=False, transpose_b=False,
                     accumulate=False):
        """``out (+)= op(a) @ op(b)`` with 16-bit ``a``/``b`` and float32 arithmetic.

        Parameters
        ----------
        a : array (m, k), or (k, m) with ``transpose_a``
        b : array (k, n), or (n, k) with ``transpose_b``
            Both float16, or both bfloat16 bits (uint16); C-contiguous.
        out : array (m, n), float32 or the inputs' 16-bit storage
            Receives the product (rounded once if 16-bit); with ``accumulate`` the
            product is added to what ``out`` holds (``beta = 1``).

        Returns
        -------
        out
        """
        xp = self.xp
        a32 = self.cast_storage(a, "float32")
        b32 = self.cast_storage(b, "float32")
        product = (a32.T if transpose_a else a32) @ (b32.T if transpose_b else b32)
        kind = self.storage_kind(out)
        if accumulate:
            product = product + self.cast_storage(out, "float32")
        if kind == "float32":
            out[...] = xp.astype(product, xp.float32)
            return out
        return self.cast_storage(xp.astype(product, xp.float32), kind, out=out)

    def sum_rows_mixed(self, dy, out, overwrite=False):
        """``out (+)= dy.sum(axis=0)`` summed in float32 from 16-bit ``dy`` (n, c) into the
        float32 ``out`` (c,): a bias gradient in mixed precision."""
        return self.sum_rows_into(self.cast_storage(dy, "float32"), out, overwrite)

    def bfloat16_gemms(self):
        """``(gemms, reason)``: an object whose ``active()`` context runs this backend's
        float32 GEMMs in bfloat16 with float32 accumulation (``begin_step(weights)`` once
        per step), or ``(None, why not)``. Used by ``precision="mixed_bfloat16"``."""
        return None, f"the {self.name} backend has no bfloat16 GEMM path"

    # ------------------------------------------------------------------ losses
    # ``scale`` is the reduction's factor (1/count for "mean", 1 for "sum"). ``grad_out``
    # (shape of the prediction) and ``loss_out`` (0-d) are optional arrays the gradient
    # and the loss are written into; the GPU backend then allocates nothing.
    def mse(self, prediction, target, scale, grad_out=None, loss_out=None):
        """``(sum((y - t)^2) * scale, 2 (y - t) scale)`` for ``y``, ``t`` of one shape/dtype."""
        xp = self.xp
        diff = prediction - target
        grad = diff * (2.0 * scale)
        loss = xp.sum(diff * diff) * scale
        return self._into(loss_out, loss), self._into(grad_out, grad)

    def binary_cross_entropy(self, z, target, scale, grad_out=None, loss_out=None):
        """Binary cross-entropy on logits ``z`` (any shape), stable for any ``z``.

        Returns ``(sum(max(z, 0) - z t + log1p(exp(-|z|))) * scale, (sigmoid(z) - t) scale)``.
        """
        xp = self.xp
        losses = xp.maximum(z, xp.zeros_like(z)) - z * target + xp.log1p(xp.exp(-xp.abs(z)))
        grad = (self.sigmoid(z) - target) * scale
        return self._into(loss_out, xp.sum(losses) * scale), self._into(grad_out, grad)

    def hinge(self, prediction, labels, margin, scale, grad_out=None, loss_out=None):
        """Multi-class hinge loss of ``(n, classes)`` scores and ``(n,)`` integer labels.

        Returns ``(sum_i sum_{j != y_i} max(0, margin - z_{i y_i} + z_ij) * scale, grad)``.
        """
        xp = self.xp
        classes = prediction.shape[1]
        onehot = self.one_hot(labels, classes, prediction.dtype)
        correct = xp.sum(prediction * onehot, axis=1, keepdims=True)
        margins = xp.maximum(prediction - correct + margin, xp.zeros_like(prediction))
        margins = margins * (1 - onehot)
        active = xp.astype(margins > 0, prediction.dtype)
        counts = xp.sum(active, axis=1, keepdims=True)
        grad = (active - onehot * counts) * scale
        return self._into(loss_out, xp.sum(margins) * scale), self._into(grad_out, grad)

    def softmax_cross_entropy(self, logits, labels, loss_out=None):
        """Mean loss (0-d array) and ``dL/dlogits``, in one pass per row where fused.

        ``loss_out`` is an optional 0-d array the loss is written into (and returned).
        """
        loss, grad = reference.softmax_cross_entropy(self.xp, logits, labels)
        return self._into(loss_out, loss), grad

    # ------------------------------------------------------------------ optimizer updates
    def sgd_update(self, param, grad, momentum_buffer, **hyper):
        """In-place SGD step; see :func:`dualnn.kernels.reference.sgd_update`."""
        p, buf = reference.sgd_update(self.xp, param, grad, momentum_buffer, **hyper)
        param[...] = p
        if momentum_buffer is not None and buf is not momentum_buffer:
            momentum_buffer[...] = buf

    def adam_update(self, param, grad, exp_avg, exp_avg_sq, **hyper):
        """In-place Adam/AdamW step; see :func:`dualnn.kernels.reference.adam_update`."""
        p, m, v = reference.adam_update(self.xp, param, grad, exp_avg, exp_avg_sq, **hyper)
        param[...] = p
        exp_avg[...] = m
        exp_avg_sq[...] = v

    def rmsprop_update(self, param, grad, square_avg, momentum_buffer, grad_avg, **hyper):
        """In-place RMSprop step; see :func:`dualnn.kernels.reference.rmsprop_update`."""
        p, v, buf, ga = reference.rmsprop_update(self.xp, param, grad, square_avg,
                                                 momentum_buffer, grad_avg, **hyper)
        param[...] = p
        square_avg[...] = v
        if momentum_buffer is not None:
            momentum_buffer[...] = buf
        if grad_avg is not None:
            grad_avg[...] = ga

    def adagrad_update(self, param, grad, state_sum, **hyper):
        """In-place Adagrad step; see :func:`dualnn.kernels.reference.adagrad_update`."""
        p, s = reference.adagrad_update(self.xp, param, grad, state_sum, **hyper)
        param[...] = p
        state_sum[...] = s

    def adadelta_update(self, param, grad, square_avg, acc_delta, **hyper):
        """In-place Adadelta step; see :func:`dualnn.kernels.reference.adadelta_update`."""
        p, v, u = reference.adadelta_update(self.xp, param, grad, square_avg, acc_delta,
                                            **hyper)
        param[...] = p
        square_avg[...] = v
        acc_delta[...] = u

    def lars_update(self, param, grad, momentum_buffer, **hyper):
        """In-place LARS step; see :func:`dualnn.kernels.trust_ratio.reference.lars_update`."""
        from ..kernels.trust_ratio import reference as trust_ratio

        p, b = trust_ratio.lars_update(self.xp, param, grad, momentum_buffer, **hyper)
        param[...] = p
        momentum_buffer[...] = b

    def lamb_update(self, param, grad, exp_avg, exp_avg_sq, **hyper):
        """In-place LAMB step; see :func:`dualnn.kernels.trust_ratio.reference.lamb_update`."""
        from ..kernels.trust_ratio import reference as trust_ratio

        p, m, v = trust_ratio.lamb_update(self.xp, param, grad, exp_avg, exp_avg_sq, **hyper)
        param[...] = p
        exp_avg[...] = m
        exp_avg_sq[...] = v


def _bits(a):
    """True for a uint16 array: bfloat16 bit patterns in mixed precision."""
    return getattr(a, "dtype", None) is not None and dtype_name(a.dtype) == "uint16"


_STORAGE = {"float32": "float32", "float16": "float16", "bfloat16": "uint16"}
_KIND_OF_STORAGE = {"float32": "float32", "float16": "float16", "uint16": "bfloat16"}


def dtype_name(dtype):
    """Canonical name (``"float32"``, ``"int64"``...) of a dtype object or string."""
    if isinstance(dtype, str):
        return dtype
    if not isinstance(dtype, np.dtype):  # other namespaces' dtypes never meet NumPy's here
        return _dtype_name_uncached(dtype)
    name = _NUMPY_DTYPE_NAMES.get(dtype)
    if name is None:
        name = _NUMPY_DTYPE_NAMES[dtype] = dtype.name
    return name


_NUMPY_DTYPE_NAMES = {}
"""NumPy dtype -> name (NumPy 2 computes ``dtype.name`` in Python, ~10 us a call)."""


def _dtype_name_uncached(dtype):
    name = getattr(dtype, "name", None)
    if isinstance(name, str):
        return name
    text = str(dtype)
    if "." in text:  # e.g. "array_api_strict.float64"
        text = text.rsplit(".", 1)[1]
    return np.dtype(text).name


def describe_array(a):
    """A short human description: library, shape, dtype."""
    mod = type(a).__module__.split(".")[0]
    shape = getattr(a, "shape", None)
    dtype = getattr(a, "dtype", None)
    if shape is None:
        return f"a {type(a).__name__}"
    return f"a {mod} array of shape {tuple(shape)} and dtype {dtype_name(dtype)}"


def _to_numpy(xp, a):
    get = getattr(a, "get", None)  # CuPy
    if get is not None and type(a).__module__.startswith("cupy"):
        return get()
    try:
        return np.from_dlpack(a)
    except Exception:
        return np.asarray(a)
