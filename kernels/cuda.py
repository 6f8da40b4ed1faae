"""Numba-CUDA kernels for the fused ops, and the launchers that check and start them.

Every op here has a readable twin of the same name in :mod:`dualnn.kernels.reference`;
tests compare the two (under Numba's CUDA simulator on every machine, on a real GPU where
one exists) and compile every kernel to PTX for sm_80 and sm_90.

Rules (``GPU.md``) this module keeps:

- ``numba.cuda`` is imported lazily: ``import dualnn`` (and importing this module) never
  touches the CUDA driver. Kernels are compiled on their first launch, for one explicit
  signature per dtype (float32 or float64, C-contiguous), once, and cached.
- A compiled kernel does not type-check its arguments, so every launcher checks dtype,
  C-contiguity, shape and array library in Python before launching, and raises
  ``TypeError``/``ValueError`` instead of computing garbage.
- Nothing is allocated here: outputs and scratch buffers come from the caller, allocated
  with the array library of the inputs (CuPy; NumPy under the simulator).
  :func:`batchnorm_scratch_shape` and :func:`softmax_cross_entropy_scratch_shape` say
  what scratch an op needs.
- With CuPy arrays a kernel runs on CuPy's current stream (a cached
  ``cuda.external_stream``); with NumPy arrays (simulator only) on the default stream.
- Reductions over the batch axis are deterministic: a 2-D grid in which each thread
  keeps statistics over a fixed slice of rows for a slice of features, partial results
  in a scratch buffer, then a merge pass over the slices in a fixed order. No atomics.
- Float32 kernels compute in float32: constants are typed with the kernel's dtype so
  no literal promotes the arithmetic to float64.

Launch geometry lives in :data:`config` (tests shrink it to exercise grid-stride loops
and many row slices on small shapes).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

FLOAT_DTYPES = ("float32", "float64")
LABEL_DTYPES = ("int32", "int64")

ACTIVATION_CODES = {"identity": 0, "relu": 1, "leaky_relu": 2, "elu": 3, "sigmoid": 4,
                    "tanh": 5}
"""Integer code of each activation kind, as the kernels receive it."""

_IDENTITY, _RELU, _LEAKY_RELU, _ELU, _SIGMOID, _TANH = range(6)

_SHARED_REDUCE = 256  # shared-memory slots of the one-block mean reduction (max block size)


@dataclass
class LaunchConfig:
    """Launch geometry of the kernels.

    Attributes
    ----------
    block : int
        Threads per block of the elementwise (grid-stride) kernels.
    max_blocks : int
        Cap on the blocks of a grid-stride launch; larger inputs loop.
    bn_block_features, bn_block_slices : int
        Block shape (features x row slices) of the batch-norm reduction kernels.
    bn_rows_per_slice : int
        Target rows each thread of a batch-norm reduction walks; sets the number of
        row slices ``S = ceil(n / bn_rows_per_slice)`` (capped by ``bn_max_slices``).
    bn_max_slices : int
    reduce_block : int
        Threads of the one-block loss-mean reduction (a power of two, <= 256).
    """

    block: int = 256
    max_blocks: int = 4096
    bn_block_features: int = 32
    bn_block_slices: int = 8
    bn_rows_per_slice: int = 8
    bn_max_slices: int = 128
    reduce_block: int = 256


config = LaunchConfig()

# --------------------------------------------------------------------------- lazy numba.cuda

cuda = None
"""``numba.cuda`` once :func:`numba_cuda` has run. A module global (not a closure
variable) because the kernels name it and the simulator swaps that global for its own."""


def numba_cuda():
    """``numba.cuda`` (the simulator when ``NUMBA_ENABLE_CUDASIM=1``), imported on first use."""
    global cuda
    if cuda is None:
        from numba import cuda as numba_cuda_module

        cuda = numba_cuda_module
    return cuda


def simulator_enabled():
    """True when Numba runs CUDA kernels in its simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    from numba import config as numba_config

    return bool(numba_config.ENABLE_CUDASIM)


# --------------------------------------------------------------------------- kernel bodies

def _make_kernels(dtype_name):
    """The Python functions of every kernel for one float dtype.

    Constants are NumPy scalars of ``dtype_name`` captured by the closures, so Numba types
    them as that dtype (float32 kernels never promote to float64).
    """
    numba_cuda()
    import numba

    cast = getattr(np, dtype_name)
    shared_dtype = numba.from_dtype(np.dtype(dtype_name))
    zero = cast(0.0)
    one = cast(1.0)
    nan = cast(np.nan)

    # ---------------------------------------------------------------- activations
    def activation_backward(dy, saved, out, kind, alpha):
        """``out = dy * f'(saved)`` elementwise over flat arrays; ``out`` may be ``dy``."""
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, dy.shape[0], stride):
            g = dy[i]
            s = saved[i]
            if kind == _RELU:
                r = g if s > zero else zero
            elif kind == _LEAKY_RELU:
                r = g if s > zero else alpha * g
            elif kind == _ELU:
                # not (s > 0) means s <= 0 or NaN, where min(s, 0) is s itself
                r = g if s > zero else g * (alpha * math.exp(s))
            elif kind == _SIGMOID:
                r = g * s * (one - s)
            elif kind == _TANH:
                r = g * (one - s * s)
            else:
                r = g
            out[i] = r

    def bias_activation_forward(z, b, out, features, kind, alpha, has_bias):
        """``out = act(z + b[col])`` over flat ``(n * features)`` arrays; ``out`` may be ``z``."""
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, z.shape[0], stride):
            v = z[i]
            if has_bias:
                v = v + b[i % features]
            if kind == _RELU:
                r = zero if v < zero else v  # NaN passes through, as the reference
            elif kind == _LEAKY_RELU:
                r = v if v > zero else alpha * v
            elif kind == _ELU:
                r = v if v > zero else alpha * math.expm1(v)
            elif kind == _SIGMOID:
                e = math.exp(-abs(v))
                r = one / (one + e) if v >= zero else e / (one + e)
            elif kind == _TANH:
                r = math.tanh(v)
            else:
                r = v
            out[i] = r

    # ---------------------------------------------------------------- batch norm
    def batchnorm_forward_partial(x, partial):
        """Welford mean/M2 of each (row slice, feature): ``partial[0|1, slice, feature]``.

        Slice ``r`` holds rows ``r, r + S, r + 2S, ...`` (``S = partial.shape[1]``), so
        adjacent threads read adjacent features of one row (coalesced). Values are shifted
        by the feature's first row (as the reference), so a mean far from zero costs no
        precision.
        """
        n = x.shape[0]
        c = x.shape[1]
        slices = partial.shape[1]
        f0, r0 = cuda.grid(2)
        fstride, rstride = cuda.gridsize(2)
        for f in range(f0, c, fstride):
            shift = x[0, f]
            for r in range(r0, slices, rstride):
                count = zero
                mean = zero
                m2 = zero
                for i in range(r, n, slices):
                    v = x[i, f] - shift
                    count += one
                    d = v - mean
                    mean += d / count
                    m2 += d * (v - mean)
                partial[0, r, f] = mean
                partial[1, r, f] = m2

    def batchnorm_forward_stats(x, partial, eps, momentum, keep, unbias, mean_out, invstd_out,
                                running_mean, running_var):
        """Merge the slices of each feature in order (Chan's formula); running statistics.

        ``keep = 1 - momentum``; ``unbias = n / (n - 1)``. The shifted mean and the shift
        are left in ``partial[0, 0, f]`` and ``partial[1, 0, f]`` for the normalize pass.
        """
        n = x.shape[0]
        slices = partial.shape[1]
        c = partial.shape[2]
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for f in range(start, c, stride):
            count = zero
            mean = zero
            m2 = zero
            for r in range(slices):
                rows = (n - r + slices - 1) // slices
                if rows > 0:
                    nb = cast(rows)
                    total = count + nb
                    d = partial[0, r, f] - mean
                    mean += d * (nb / total)
                    m2 += partial[1, r, f] + d * d * (count * nb / total)
                    count = total
            var = m2 / cast(n)
            shift = x[0, f]
            partial[0, 0, f] = mean
            partial[1, 0, f] = shift
            mean = shift + mean
            mean_out[f] = mean
            invstd_out[f] = one / math.sqrt(var + eps)
            running_mean[f] = keep * running_mean[f] + momentum * mean
            running_var[f] = keep * running_var[f] + momentum * (var * unbias)

    def batchnorm_forward_apply(x, partial, invstd, gamma, beta, out, features, relu):
        """``out = (x - mean) * (invstd * gamma) + beta`` (then ``max(., 0)``), flat arrays.

        ``x - mean`` is formed as ``(x - shift) - shifted_mean`` with both saved in
        ``partial[:, 0, f]`` by the merge, so ``out`` may be ``x``.
        """
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, x.shape[0], stride):
            f = i % features
            centered = (x[i] - partial[1, 0, f]) - partial[0, 0, f]
            y = centered * (invstd[f] * gamma[f]) + beta[f]
            if relu and y < zero:  # NaN passes through, as torch.relu
                y = zero
            out[i] = y

    def batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps, out, features,
                               relu):
        """``out = (x - rm) * gamma / sqrt(rv + eps) + beta`` (then ``max(., 0)``), flat."""
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, x.shape[0], stride):
            f = i % features
            scale = gamma[f] / math.sqrt(running_var[f] + eps)
            y = (x[i] - running_mean[f]) * scale + beta[f]
            if relu and y < zero:  # NaN passes through, as torch.relu
                y = zero
            out[i] = y

    def batchnorm_backward_partial(dy, x, gamma, beta, mean, invstd, partial, relu):
        """Per (row slice, feature): ``partial[0] = sum dy``, ``partial[1] = sum dy * xhat``.

        With ``relu``, ``dy`` is masked where ``gamma * xhat + beta <= 0`` (recomputed).
        """
        n = x.shape[0]
        c = x.shape[1]
        slices = partial.shape[1]
        f0, r0 = cuda.grid(2)
        fstride, rstride = cuda.gridsize(2)
        for f in range(f0, c, fstride):
            mu = mean[f]
            istd = invstd[f]
            g = gamma[f]
            b = beta[f]
            for r in range(r0, slices, rstride):
                sum_dy = zero
                sum_dy_xhat = zero
                for i in range(r, n, slices):
                    xhat = (x[i, f] - mu) * istd
                    d = dy[i, f]
                    if relu and not xhat * g + b > zero:
                        d = zero
                    sum_dy += d
                    sum_dy_xhat += d * xhat
                partial[0, r, f] = sum_dy
                partial[1, r, f] = sum_dy_xhat

    def batchnorm_backward_sums(partial, dgamma, dbeta):
        """Add the slices of each feature in order: ``dbeta``, ``dgamma``."""
        slices = partial.shape[1]
        c = partial.shape[2]
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for f in range(start, c, stride):
            sum_dy = zero
            sum_dy_xhat = zero
            for r in range(slices):
                sum_dy += partial[0, r, f]
                sum_dy_xhat += partial[1, r, f]
            dbeta[f] = sum_dy
            dgamma[f] = sum_dy_xhat

    def batchnorm_backward_apply(dy, x, gamma, beta, mean, invstd, dgamma, dbeta, out,
                                 features, n, relu):
        """``dx = gamma * invstd / n * (n * dy - dbeta - xhat * dgamma)``; ``out`` may be ``dy``."""
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, x.shape[0], stride):
            f = i % features
            istd = invstd[f]
            g = gamma[f]
            xhat = (x[i] - mean[f]) * istd
            d = dy[i]
            if relu and not xhat * g + beta[f] > zero:
                d = zero
            out[i] = (g * istd / n) * (n * d - dbeta[f] - xhat * dgamma[f])

    # ---------------------------------------------------------------- softmax cross-entropy
    def softmax_cross_entropy_rows(logits, labels, dlogits, row_loss):
        """One row per thread: stable log-sum-exp, the row's loss, ``dlogits / n``.

        A label outside ``[0, k)`` gives a NaN loss and NaN gradient row (never an
        out-of-bounds read).
        """
        n = logits.shape[0]
        k = logits.shape[1]
        nf = cast(n)
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, n, stride):
            label = labels[i]
            if label < 0 or label >= k:
                row_loss[i] = nan
                for j in range(k):
                    dlogits[i, j] = nan
                continue
            top = logits[i, 0]
            for j in range(1, k):
                v = logits[i, j]
                if v > top or v != v:  # noqa: PLR0124 - v != v: NaN propagates
                    top = v
            total = zero
            for j in range(k):
                total += math.exp(logits[i, j] - top)
            log_total = math.log(total)
            row_loss[i] = log_total - (logits[i, label] - top)
            for j in range(k):
                p = math.exp((logits[i, j] - top) - log_total)
                if j == label:
                    p -= one
                dlogits[i, j] = p / nf

    def softmax_cross_entropy_mean(row_loss, loss):
        """One block: ``loss[0] = sum(row_loss) / n`` by a fixed-order tree (deterministic)."""
        buf = cuda.shared.array(_SHARED_REDUCE, shared_dtype)
        t = cuda.threadIdx.x
        width = cuda.blockDim.x
        n = row_loss.shape[0]
        acc = zero
        for i in range(t, n, width):
            acc += row_loss[i]
        buf[t] = acc
        cuda.syncthreads()
        half = width // 2
        while half > 0:
            if t < half:
                buf[t] += buf[t + half]
            cuda.syncthreads()
            half //= 2
        if t == 0:
            loss[0] = buf[0] / cast(n)

    # ---------------------------------------------------------------- optimizers
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


SIGNATURES = {
    "activation_backward": "void({f}[::1], {f}[::1], {f}[::1], int32, {f})",
    "bias_activation_forward": "void({f}[::1], {f}[::1], {f}[::1], int64, int32, {f}, int32)",
    "batchnorm_forward_partial": "void({f}[:, ::1], {f}[:, :, ::1])",
    "batchnorm_forward_stats": ("void({f}[:, ::1], {f}[:, :, ::1], {f}, {f}, {f}, {f}, "
                                "{f}[::1], {f}[::1], {f}[::1], {f}[::1])"),
    "batchnorm_forward_apply": ("void({f}[::1], {f}[:, :, ::1], {f}[::1], {f}[::1], {f}[::1], "
                                "{f}[::1], int64, int32)"),
    "batchnorm_forward_eval": ("void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}, "
                               "{f}[::1], int64, int32)"),
    "batchnorm_backward_partial": ("void({f}[:, ::1], {f}[:, ::1], {f}[::1], {f}[::1], "
                                   "{f}[::1], {f}[::1], {f}[:, :, ::1], int32)"),
    "batchnorm_backward_sums": "void({f}[:, :, ::1], {f}[::1], {f}[::1])",
    "batchnorm_backward_apply": ("void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}[::1], "
                                 "{f}[::1], {f}[::1], {f}[::1], {f}[::1], int64, {f}, int32)"),
    "softmax_cross_entropy_rows": "void({f}[:, ::1], {i}[::1], {f}[:, ::1], {f}[::1])",
    "softmax_cross_entropy_mean": "void({f}[::1], {f}[::1])",
    "sgd_update": ("void({f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f}, {f}, int32, int32, "
                   "int32, int32)"),
    "adam_update": ("void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f}, {f}, {f}, {f}, "
                    "{f}, {f}, {f}, int32)"),
    "rmsprop_update": ("void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f}, "
                       "{f}, {f}, {f}, int32, int32, int32)"),
    "adagrad_update": "void({f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f}, int32)",
    "adadelta_update": ("void({f}[::1], {f}[::1], {f}[::1], {f}[::1], {f}, {f}, {f}, {f}, {f}, "
                        "int32)"),
}
"""Explicit signature of every kernel; ``{f}`` is the float dtype, ``{i}`` the label dtype."""


def signature(name, dtype, label_dtype="int64"):
    """The explicit Numba signature string of kernel ``name`` for ``dtype``."""
    return SIGNATURES[name].format(f=dtype, i=label_dtype)


_python_kernels = {}


def python_kernel(name, dtype):
    """The (uncompiled) Python function of kernel ``name`` for ``dtype``.

    ``cuda.compile_ptx(python_kernel(name, dtype), signature(name, dtype), cc=(8, 0))``
    compiles it for a real GPU without one.
    """
    if dtype not in _python_kernels:
        _python_kernels[dtype] = _make_kernels(dtype)
    return _python_kernels[dtype][name]


def kernel_variants():
    """Every ``(name, dtype, label_dtype)`` the launchers may compile."""
    out = []
    for name, sig in SIGNATURES.items():
        for dtype in FLOAT_DTYPES:
            if "{i}" in sig:
                out.extend((name, dtype, lab) for lab in LABEL_DTYPES)
            else:
                out.append((name, dtype, None))
    return out


_compiled = {}
_compile_lock = threading.Lock()


class _SimulatorLaunch:
    """Simulator only: NumPy arguments become simulated device arrays *sharing* memory.

    By default the simulator copies every NumPy argument in and back out, so two arguments
    that alias (``out`` is ``dy``) would be separate copies and the last copy-back would win.
    On a GPU, CuPy arrays are passed without copies; this wrapper makes the simulator do the
    same, so aliasing and races behave as they would on the device.
    """

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, launch_config):
        launch = self.kernel[launch_config]

        def run(*args):
            return launch(*[_simulated_device_array(a) for a in args])

        return run


def _simulated_device_array(a):
    if isinstance(a, np.ndarray) and a.ndim > 0:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return FakeCUDAArray(a)
    return a


def compiled_kernel(name, dtype, label_dtype=None):
    """Kernel ``name`` compiled for its explicit ``dtype`` signature (once, then cached)."""
    key = (name, dtype, label_dtype)
    kernel = _compiled.get(key)
    if kernel is None:
        with _compile_lock:
            kernel = _compiled.get(key)
            if kernel is None:
                sig = signature(name, dtype, label_dtype or "int64")
                kernel = numba_cuda().jit(sig)(python_kernel(name, dtype))
                if simulator_enabled():
                    kernel = _SimulatorLaunch(kernel)
                _compiled[key] = kernel
    return kernel


def precompile(dtypes=FLOAT_DTYPES):
    """Compile every kernel for ``dtypes`` now (e.g. when a GPU backend is created)."""
    for name, dtype, label_dtype in kernel_variants():
        if dtype in dtypes:
            compiled_kernel(name, dtype, label_dtype)


# --------------------------------------------------------------------------- launch helpers

_streams = {}


def _is_cupy(a):
    return type(a).__module__.split(".")[0] == "cupy"


def _stream_for(a):
    """CuPy's current stream (as a cached Numba external stream) for CuPy arrays, else 0."""
    if not _is_cupy(a):
        return 0
    import cupy

    ptr = cupy.cuda.get_current_stream().ptr
    if ptr == 0:  # CuPy's null stream is the legacy default stream
        return 0
    stream = _streams.get(ptr)
    if stream is None:
        stream = numba_cuda().external_stream(ptr)
        _streams[ptr] = stream
    return stream


def _dtype_of(a):
    return np.dtype(a.dtype).name


def _check(name, arrays, dtype=None):
    """Check ``{label: (array, shape or None)}``: same float dtype, C-contiguous, same library.

    Returns the common dtype name.
    """
    first = None
    for label, (a, shape) in arrays.items():
        if first is None:
            first = a
            cupy_arrays = _is_cupy(a)
            if not cupy_arrays and not isinstance(a, np.ndarray):
                raise TypeError(f"{name}: {label} must be a CuPy array (or a NumPy array "
                                f"under the CUDA simulator), got {type(a).__name__}")
            if not cupy_arrays and not simulator_enabled():
                raise TypeError(f"{name}: NumPy arrays run only under the CUDA simulator "
                                "(NUMBA_ENABLE_CUDASIM=1); on a GPU pass CuPy arrays")
            if dtype is None:
                dtype = _dtype_of(a)
        elif _is_cupy(a) != cupy_arrays or not (cupy_arrays or isinstance(a, np.ndarray)):
            raise TypeError(f"{name}: {label} is a {type(a).__module__} array but the other "
                            "arguments are not; all arrays must come from one library")
        if _dtype_of(a) != dtype:
            raise TypeError(f"{name}: {label} has dtype {_dtype_of(a)}, expected {dtype}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name}: {label} must be C-contiguous")
        if shape is not None and tuple(a.shape) != tuple(shape):
            raise ValueError(f"{name}: {label} has shape {tuple(a.shape)}, expected "
                             f"{tuple(shape)}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: dtype {dtype} has no kernel; expected one of {FLOAT_DTYPES}")
    return dtype


def _require_array(name, label, a):
    """Raise TypeError unless ``a`` is a NumPy or CuPy array (before reading its shape)."""
    if not (isinstance(a, np.ndarray) or _is_cupy(a)) or not hasattr(a, "shape"):
        raise TypeError(f"{name}: {label} must be a CuPy array (or a NumPy array under the "
                        f"CUDA simulator), got {type(a).__name__}")


def _grid_1d(n):
    threads = max(1, min(config.block, n))
    blocks = max(1, min(-(-n // threads), config.max_blocks))
    return blocks, threads


def _flat(a):
    return a.reshape(-1)


def _activation_code(kind):
    try:
        return ACTIVATION_CODES[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {kind!r}; expected one of "
                         f"{tuple(ACTIVATION_CODES)}") from None


# --------------------------------------------------------------------------- launchers

def activation_backward(kind, dy, saved, alpha=0.0, *, out):
    """``out = dy * f'(.)``; see :func:`dualnn.kernels.reference.activation_backward`.

    ``out`` may be ``dy`` (in-place backward). Returns ``out``.
    """
    code = _activation_code(kind)
    _require_array("activation_backward", "dy", dy)
    shape = dy.shape
    dtype = _check("activation_backward",
                   {"dy": (dy, None), "saved": (saved, shape), "out": (out, shape)})
    size = int(np.prod(shape, dtype=np.int64))
    if size:
        blocks, threads = _grid_1d(size)
        kernel = compiled_kernel("activation_backward", dtype)
        kernel[blocks, threads, _stream_for(dy)](_flat(dy), _flat(saved), _flat(out), code,
                                                 alpha)
    return out


def bias_activation_forward(z, b, kind, alpha=0.0, *, out):
    """``out = act(z + b)`` for ``z`` of shape ``(n, c)``; ``b`` of shape ``(c,)`` or None.

    ``out`` may be ``z``. Returns ``out``.
    """
    code = _activation_code(kind)
    _require_array("bias_activation_forward", "z", z)
    if z.ndim != 2:
        raise ValueError(f"bias_activation_forward: z must be 2-D (batch, features), got "
                         f"shape {tuple(z.shape)}")
    n, c = z.shape
    arrays = {"z": (z, None), "out": (out, z.shape)}
    if b is not None:
        arrays["b"] = (b, (c,))
    dtype = _check("bias_activation_forward", arrays)
    if n * c:
        zf = _flat(z)
        blocks, threads = _grid_1d(n * c)
        kernel = compiled_kernel("bias_activation_forward", dtype)
        kernel[blocks, threads, _stream_for(z)](
            zf, zf[:1] if b is None else b, _flat(out), c, code, alpha, int(b is not None))
    return out


def activation_forward(kind, z, alpha=0.0, *, out):
    """``out = act(z)`` elementwise, any shape (the bias kernel without a bias)."""
    code = _activation_code(kind)
    _require_array("activation_forward", "z", z)
    dtype = _check("activation_forward", {"z": (z, None), "out": (out, z.shape)})
    size = int(np.prod(z.shape, dtype=np.int64))
    if size:
        zf = _flat(z)
        blocks, threads = _grid_1d(size)
        kernel = compiled_kernel("bias_activation_forward", dtype)
        kernel[blocks, threads, _stream_for(z)](zf, zf[:1], _flat(out), 1, code, alpha, 0)
    return out


def batchnorm_scratch_shape(n, c):
    """Shape ``(2, S, c)`` of the scratch a batch-norm pass over ``(n, c)`` needs."""
    slices = max(1, min(-(-n // max(1, config.bn_rows_per_slice)), config.bn_max_slices, n))
    return (2, slices, c)


def _bn_grid(c, slices):
    bx = max(1, min(config.bn_block_features, c))
    by = max(1, min(config.bn_block_slices, slices))
    return (-(-c // bx), -(-slices // by)), (bx, by)


def _check_scratch(name, scratch, c):
    if scratch.ndim != 3 or scratch.shape[0] != 2 or scratch.shape[2] != c \
            or scratch.shape[1] < 1:
        raise ValueError(f"{name}: scratch must have shape (2, S, {c}) with S >= 1, got "
                         f"{tuple(scratch.shape)}; see batchnorm_scratch_shape")


def batchnorm_forward_train(x, gamma, beta, running_mean, running_var, eps, momentum,
                            relu=False, *, out, mean, invstd, scratch):
    """Training-mode batch norm; see :func:`dualnn.kernels.reference.batchnorm_forward_train`.

    Writes ``out`` (may be ``x``), ``mean``, ``invstd`` and updates ``running_mean`` and
    ``running_var`` in place. ``scratch`` has shape :func:`batchnorm_scratch_shape`; its
    ``S`` (row slices) fixes the reduction order, so results are deterministic for a given
    scratch shape. Three launches: per-slice Welford statistics of ``x - x[0]``, an ordered
    merge (mean, invstd, running statistics), normalize.

    Returns ``(out, mean, invstd)``.
    """
    _require_array("batchnorm_forward_train", "x", x)
    if x.ndim != 2:
        raise ValueError(f"batchnorm_forward_train: x must be 2-D, got shape {tuple(x.shape)}")
    n, c = x.shape
    if n < 2:
        raise ValueError(f"batchnorm_forward_train: training needs at least 2 rows, got {n}")
    vec = (c,)
    dtype = _check("batchnorm_forward_train", {
        "x": (x, None), "gamma": (gamma, vec), "beta": (beta, vec),
        "running_mean": (running_mean, vec), "running_var": (running_var, vec),
        "out": (out, x.shape), "mean": (mean, vec), "invstd": (invstd, vec),
        "scratch": (scratch, None)})
    _check_scratch("batchnorm_forward_train", scratch, c)
    if c == 0:
        return out, mean, invstd
    stream = _stream_for(x)
    grid, block = _bn_grid(c, scratch.shape[1])
    compiled_kernel("batchnorm_forward_partial", dtype)[grid, block, stream](x, scratch)
    blocks, threads = _grid_1d(c)
    compiled_kernel("batchnorm_forward_stats", dtype)[blocks, threads, stream](
        x, scratch, eps, momentum, 1.0 - momentum, n / (n - 1), mean, invstd, running_mean,
        running_var)
    blocks, threads = _grid_1d(n * c)
    compiled_kernel("batchnorm_forward_apply", dtype)[blocks, threads, stream](
        _flat(x), scratch, invstd, gamma, beta, _flat(out), c, int(bool(relu)))
    return out, mean, invstd


def batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps, relu=False, *, out):
    """Inference batch norm with the running statistics, one launch; ``out`` may be ``x``."""
    _require_array("batchnorm_forward_eval", "x", x)
    if x.ndim != 2:
        raise ValueError(f"batchnorm_forward_eval: x must be 2-D, got shape {tuple(x.shape)}")
    n, c = x.shape
    vec = (c,)
    dtype = _check("batchnorm_forward_eval", {
        "x": (x, None), "gamma": (gamma, vec), "beta": (beta, vec),
        "running_mean": (running_mean, vec), "running_var": (running_var, vec),
        "out": (out, x.shape)})
    if n * c:
        blocks, threads = _grid_1d(n * c)
        compiled_kernel("batchnorm_forward_eval", dtype)[blocks, threads, _stream_for(x)](
            _flat(x), gamma, beta, running_mean, running_var, eps, _flat(out), c,
            int(bool(relu)))
    return out


def batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu=False, *, out, dgamma, dbeta,
                       scratch):
    """Batch-norm gradients; see :func:`dualnn.kernels.reference.batchnorm_backward`.

    Writes ``out`` (= dx, may be ``dy``), ``dgamma`` and ``dbeta``. Three launches: slice
    sums, ordered merge, dx. Returns ``(out, dgamma, dbeta)``.
    """
    _require_array("batchnorm_backward", "x", x)
    if x.ndim != 2:
        raise ValueError(f"batchnorm_backward: x must be 2-D, got shape {tuple(x.shape)}")
    n, c = x.shape
    vec = (c,)
    dtype = _check("batchnorm_backward", {
        "dy": (dy, x.shape), "x": (x, None), "gamma": (gamma, vec), "beta": (beta, vec),
        "mean": (mean, vec), "invstd": (invstd, vec), "out": (out, x.shape),
        "dgamma": (dgamma, vec), "dbeta": (dbeta, vec), "scratch": (scratch, None)})
    _check_scratch("batchnorm_backward", scratch, c)
    if c == 0:
        return out, dgamma, dbeta
    stream = _stream_for(x)
    relu = int(bool(relu))
    grid, block = _bn_grid(c, scratch.shape[1])
    compiled_kernel("batchnorm_backward_partial", dtype)[grid, block, stream](
        dy, x, gamma, beta, mean, invstd, scratch, relu)
    blocks, threads = _grid_1d(c)
    compiled_kernel("batchnorm_backward_sums", dtype)[blocks, threads, stream](
        scratch, dgamma, dbeta)
    if n:
        blocks, threads = _grid_1d(n * c)
        compiled_kernel("batchnorm_backward_apply", dtype)[blocks, threads, stream](
            _flat(dy), _flat(x), gamma, beta, mean, invstd, dgamma, dbeta, _flat(out), c,
            float(n), relu)
    return out, dgamma, dbeta


def softmax_cross_entropy_scratch_shape(n):
    """Shape of the per-row loss scratch of :func:`softmax_cross_entropy`."""
    return (n,)


def softmax_cross_entropy(logits, labels, *, loss, dlogits, row_loss):
    """Mean softmax cross-entropy and ``dL/dlogits``; see the reference twin.

    ``logits`` ``(n, k)``, ``labels`` int32/int64 ``(n,)``, ``loss`` a 0-d (or 1-element)
    array, ``dlogits`` ``(n, k)``, ``row_loss`` ``(n,)`` scratch. Labels are not checked
    against ``[0, k)`` on the host (that would sync the device); a bad label gives a NaN
    loss. Two launches: one thread per row, then a one-block fixed-order mean.

    Returns ``(loss, dlogits)``.
    """
    _require_array("softmax_cross_entropy", "logits", logits)
    _require_array("softmax_cross_entropy", "labels", labels)
    _require_array("softmax_cross_entropy", "loss", loss)
    if logits.ndim != 2:
        raise ValueError(f"softmax_cross_entropy: logits must be 2-D, got shape "
                         f"{tuple(logits.shape)}")
    n, k = logits.shape
    if n == 0 or k == 0:
        raise ValueError(f"softmax_cross_entropy: empty logits of shape {(n, k)}")
    dtype = _check("softmax_cross_entropy", {
        "logits": (logits, None), "dlogits": (dlogits, logits.shape),
        "row_loss": (row_loss, (n,))})
    if int(np.prod(loss.shape, dtype=np.int64)) != 1:
        raise ValueError(f"softmax_cross_entropy: loss must hold one element, got shape "
                         f"{tuple(loss.shape)}")
    _check("softmax_cross_entropy", {"loss": (loss, None)}, dtype)
    label_dtype = _dtype_of(labels)
    if label_dtype not in LABEL_DTYPES:
        raise TypeError(f"softmax_cross_entropy: labels have dtype {label_dtype}, expected "
                        f"one of {LABEL_DTYPES}")
    if _is_cupy(labels) != _is_cupy(logits):
        raise TypeError("softmax_cross_entropy: labels and logits must come from one library")
    if tuple(labels.shape) != (n,) or not labels.flags.c_contiguous:
        raise ValueError(f"softmax_cross_entropy: labels must be a contiguous ({n},) array, "
                         f"got shape {tuple(labels.shape)}")
    stream = _stream_for(logits)
    blocks, threads = _grid_1d(n)
    compiled_kernel("softmax_cross_entropy_rows", dtype, label_dtype)[blocks, threads, stream](
        logits, labels, dlogits, row_loss)
    width = 1
    while width * 2 <= min(n, config.reduce_block, _SHARED_REDUCE):
        width *= 2
    compiled_kernel("softmax_cross_entropy_mean", dtype)[1, width, stream](
        row_loss, loss.reshape(1))
    return loss, dlogits


def _optimizer_arrays(name, param, **state):
    _require_array(name, "param", param)
    arrays = {"param": (param, None)}
    arrays.update({label: (a, param.shape) for label, a in state.items()})
    dtype = _check(name, arrays)
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
        pf = _flat(param)
        buf = _flat(momentum_buffer) if momentum != 0 else pf
        blocks, threads = _grid_1d(size)
        compiled_kernel("sgd_update", dtype)[blocks, threads, _stream_for(param)](
            pf, _flat(grad), buf, lr, momentum, 1.0 - dampening, weight_decay,
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
        blocks, threads = _grid_1d(size)
        compiled_kernel("adam_update", dtype)[blocks, threads, _stream_for(param)](
            _flat(param), _flat(grad), _flat(exp_avg), _flat(exp_avg_sq), beta1, 1.0 - beta1,
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
        pf = _flat(param)
        blocks, threads = _grid_1d(size)
        compiled_kernel("rmsprop_update", dtype)[blocks, threads, _stream_for(param)](
            pf, _flat(grad), _flat(square_avg),
            _flat(momentum_buffer) if momentum > 0 else pf,
            _flat(grad_avg) if centered else pf,
            lr, alpha, 1.0 - alpha, eps, weight_decay, momentum, int(weight_decay != 0),
            int(bool(centered)), int(momentum > 0))


def adagrad_update(param, grad, state_sum, *, step, lr, lr_decay=0.0, weight_decay=0.0,
                   eps=1e-10):
    """In-place Adagrad step; see :func:`dualnn.kernels.reference.adagrad_update`."""
    dtype, size = _optimizer_arrays("adagrad_update", param, grad=grad, state_sum=state_sum)
    if size:
        clr = lr / (1 + (step - 1) * lr_decay)
        blocks, threads = _grid_1d(size)
        compiled_kernel("adagrad_update", dtype)[blocks, threads, _stream_for(param)](
            _flat(param), _flat(grad), _flat(state_sum), clr, eps, weight_decay,
            int(weight_decay != 0))


def adadelta_update(param, grad, square_avg, acc_delta, *, lr=1.0, rho=0.9, eps=1e-6,
                    weight_decay=0.0):
    """In-place Adadelta step; see :func:`dualnn.kernels.reference.adadelta_update`."""
    dtype, size = _optimizer_arrays("adadelta_update", param, grad=grad,
                                    square_avg=square_avg, acc_delta=acc_delta)
    if size:
        blocks, threads = _grid_1d(size)
        compiled_kernel("adadelta_update", dtype)[blocks, threads, _stream_for(param)](
            _flat(param), _flat(grad), _flat(square_avg), _flat(acc_delta), lr, rho,
            1.0 - rho, eps, weight_decay, int(weight_decay != 0))
