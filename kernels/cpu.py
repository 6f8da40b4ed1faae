"""The fused ops of :mod:`dualnn.kernels.reference` as Numba ``@njit`` kernels (NumPy arrays).

Each public function here has the name of its reference twin and computes the same result,
but writes into preallocated outputs in as few passes over memory as the math allows:

========================  =========================================================
``activation_forward``    ``out = act(z)``, one pass
``bias_activation_forward`` ``out = act(z + b)``, one pass (``out`` may be ``z``)
``activation_backward``   ``out = dy * f'(saved)``, one pass (``out`` may be ``dy``)
``batchnorm_forward_train`` statistics in one pass (shifted sums in float64), normalize
                          (+ ReLU) in a second, running statistics updated in place
``batchnorm_forward_eval`` one pass
``batchnorm_backward``    reductions in one pass, ``dx`` in a second (``out`` may be ``dy``)
``softmax_cross_entropy`` one pass per row; returns the mean loss
``*_update`` (optimizers) one in-place pass over the flattened parameter and state
========================  =========================================================

Preconditions (checked by every function, which raises ``ValueError`` otherwise, so a
kernel never reads out of bounds): all float arrays of one call share one dtype,
``float32`` or ``float64``, are C-contiguous and have the documented shapes. An output may
be the very array named as its alias (``out is dy``) or disjoint from the inputs; partial
overlaps are not supported. :class:`dualnn.backend.NumpyBackend` checks these first and
runs the reference math when they do not hold.

Compilation is lazy: neither importing this module nor importing ``dualnn`` imports
Numba. The first call builds every kernel (``cache=True``, see :func:`cache_dir`) and
compiles the signatures it needs. Each kernel has a serial and a parallel build (the
same source; ``prange`` is ``range`` in the serial one); the size thresholds below pick
one. Reductions split the rows into a number of blocks that depends only on the batch
size and merge the partial sums in block order, so results are bit-identical between
calls, between the serial and parallel builds, and for any thread count.

When the output is its input's memory, a kernel runs a loop that reads and writes through
that one name: with two names for one array LLVM's runtime overlap check fails and its
scalar fallback runs (2.4-4x slower, measured). Sigmoid, tanh and ELU take their ``exp`` /
``tanh`` / ``expm1`` from NumPy's SIMD ufuncs, split across threads (:func:`split_ufunc`),
between Numba passes: Numba's own calls go to the scalar C library, ~12x slower per core.

Scalars (learning rates, ``alpha``, ``eps``...) are cast to the arrays' dtype before the
call, so float32 kernels compute in float32 as the reference does with NumPy's weak
Python scalars; batch-norm statistics and loss sums accumulate in float64. No kernel uses
``fastmath``: NaN and infinities propagate as in the reference.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import types

import numpy as np

from .reference import ACTIVATIONS

PARALLEL_THRESHOLD = 1 << 20
"""Elements from which softmax cross-entropy and the SGD/RMSprop/Adagrad/Adadelta updates
run their parallel build (TOOLCHAIN.md: serial wins below ~1M elements right after a GEMM)."""

FORWARD_PARALLEL_THRESHOLD = 1 << 18
"""Elements from which the activation, bias + activation and batch-norm forward kernels
run their parallel build. Measured right after a GEMM on (n, 1024) float32 with dualnn's
thread policy (``python tools/measure_cpu_kernels.py``, section [6], two runs): the
crossover is near n=256 (batch-norm forward serial 0.22-0.34 vs parallel 0.25-0.28 ms;
bias + ReLU 0.075-0.11 vs 0.078-0.094 ms); at n=512 parallel wins (0.69-0.70 vs 0.49-0.51
ms; 0.15-0.19 vs 0.11-0.14 ms)."""

BACKWARD_PARALLEL_THRESHOLD = 1 << 16
"""Elements from which the activation backward kernel runs its parallel build (section [6]
as above, ReLU in place: serial 0.054 vs parallel 0.040 ms at n=64, 0.40 vs 0.16 ms at
n=512)."""

COMPUTE_PARALLEL_THRESHOLD = 1 << 14
"""Elements from which the compute-bound kernels (batch-norm backward, Adam) run their
parallel build. Measured as "always parallel" at training sizes; below ~16k elements the
thread start-up costs more than the work."""

REDUCTION_BLOCKS = 8
"""Most row blocks a batch-norm reduction is split into (merged in block order)."""

MIN_ROWS_PER_BLOCK = 16
"""Fewest rows per reduction block."""

IDENTITY, RELU, LEAKY_RELU, ELU, SIGMOID, TANH = range(6)
_KIND_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}
assert ACTIVATIONS[RELU] == "relu" and ACTIVATIONS[TANH] == "tanh"

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

prange = range  # replaced by numba.prange in the namespace the kernels are compiled in


# =======================================================================================
# Kernel sources. Plain Python (they run unjitted too, slowly); compiled by _build().
# =======================================================================================

def _relu_if(relu, v, zero):
    """``max(v, 0)`` when ``relu``, else ``v`` (helper, inlined)."""
    return zero if relu and v < zero else v


def _bn_input_grad(xv, d, mean, invstd, gamma, beta, k, nf, dbeta, dgamma, relu, zero):
    """One element of batch norm's ``dx`` (+ the fused ReLU's mask) (helper, inlined)."""
    xh = (xv - mean) * invstd
    if relu and not (xh * gamma + beta > zero):
        d = zero
    return k * (nf * d - dbeta - xh * dgamma)


def _reduction_blocks(n):
    """Number of row blocks of a reduction over ``n`` rows (depends on ``n`` only)."""
    return max(1, min(REDUCTION_BLOCKS, n // MIN_ROWS_PER_BLOCK))


def _k_activation_forward(kind, z, alpha, out):
    # ReLU, LeakyReLU and identity; ELU, sigmoid and tanh take NumPy's SIMD exp/expm1/tanh
    # (activation_forward routes them to _simd_forward and the ELU passes).
    n = z.shape[0]
    zero = z.dtype.type(0)
    if kind == RELU:
        for i in prange(n):
            v = z[i]
            out[i] = zero if v < zero else v
    elif kind == LEAKY_RELU:
        for i in prange(n):
            v = z[i]
            out[i] = v if v > zero else alpha * v
    else:
        for i in prange(n):
            out[i] = z[i]


def _k_bias_activation_forward(kind, z, b, alpha):
    # In place on z, one row loop per kind so each inner loop vectorizes (a shared helper
    # called per row ran several times slower). In place through one name: with separate
    # input and output arguments that are the same array, LLVM's runtime alias check fails
    # and the scalar fallback loop runs (measured 4x slower).
    n, c = z.shape
    zero = z.dtype.type(0)
    if kind == RELU:
        for i in prange(n):
            zi = z[i]
            for j in range(c):
                v = zi[j] + b[j]
                zi[j] = zero if v < zero else v
    elif kind == LEAKY_RELU:
        for i in prange(n):
            zi = z[i]
            for j in range(c):
                v = zi[j] + b[j]
                zi[j] = v if v > zero else alpha * v
    else:  # identity (the wrapper routes ELU, sigmoid and tanh elsewhere)
        for i in prange(n):
            zi = z[i]
            for j in range(c):
                zi[j] = zi[j] + b[j]


def _k_bias_add(z, b, out, inplace):
    # out = z + b (b: one value per column), the first pass of _simd_forward; in place
    # through one name when out is z (see _k_bias_activation_forward).
    n, c = z.shape
    if inplace:
        for i in prange(n):
            zi = z[i]
            for j in range(c):
                zi[j] = zi[j] + b[j]
    else:
        for i in prange(n):
            zi = z[i]
            oi = out[i]
            for j in range(c):
                oi[j] = zi[j] + b[j]


def _k_nonpositive_part(z, out):
    # out = min(z, 0), NaN kept: the argument of exp/expm1 in the ELU passes.
    zero = z.dtype.type(0)
    for i in prange(z.shape[0]):
        v = z[i]
        out[i] = zero if v > zero else v


def _k_elu_from_expm1(z, e, alpha, out, inplace):
    # out = z where z > 0, else alpha * e (e = expm1(min(z, 0))); in place through one name
    # when out is z (see _k_bias_activation_forward).
    zero = z.dtype.type(0)
    if inplace:
        for i in prange(z.shape[0]):
            v = z[i]
            z[i] = v if v > zero else alpha * e[i]
    else:
        for i in prange(z.shape[0]):
            v = z[i]
            out[i] = v if v > zero else alpha * e[i]


def _k_elu_backward_from_exp(dy, z, e, alpha, out, inplace):
    # out = dy where z > 0, else dy * (alpha * e) (e = exp(min(z, 0))); in place on dy
    # through one name when out is dy.
    zero = z.dtype.type(0)
    if inplace:
        for i in prange(z.shape[0]):
            d = dy[i]
            dy[i] = d if z[i] > zero else d * (alpha * e[i])
    else:
        for i in prange(z.shape[0]):
            d = dy[i]
            out[i] = d if z[i] > zero else d * (alpha * e[i])


def _k_logistic_from_exp(e):
    # e = e / (1 + e) in place: the logistic function of v given e = exp(v); an overflowed
    # e = inf gives 1 (the exact value rounds to 1 wherever exp overflows), NaN stays NaN.
    one = e.dtype.type(1)
    inf = e.dtype.type(np.inf)
    for i in prange(e.shape[0]):
        v = e[i]
        e[i] = one if v == inf else v / (one + v)


def _k_activation_backward(kind, dy, saved, alpha, out):
    # One prange loop per kind (a loop per branch vectorizes; a blocked loop around a
    # shared helper ran ~1.5x slower on (4096, 1024) float32). ELU's needs exp: the wrapper
    # runs it as NumPy's SIMD exp between two Numba passes instead.
    zero = dy.dtype.type(0)
    one = dy.dtype.type(1)
    n = dy.shape[0]
    if kind == RELU:
        for i in prange(n):
            d = dy[i]
            out[i] = d if saved[i] > zero else zero
    elif kind == LEAKY_RELU:
        for i in prange(n):
            d = dy[i]
            out[i] = d if saved[i] > zero else alpha * d
    elif kind == SIGMOID:
        for i in prange(n):
            s = saved[i]
            out[i] = dy[i] * s * (one - s)
    elif kind == TANH:
        for i in prange(n):
            s = saved[i]
            out[i] = dy[i] * (one - s * s)
    else:
        for i in prange(n):
            out[i] = dy[i]


def _k_batchnorm_forward_train(x, gamma, beta, running_mean, running_var, eps, momentum, relu,
                               out, save_mean, save_invstd, inplace):
    n, c = x.shape
    nb = _reduction_blocks(n)
    # Pass 1: sums of d = x - shift and d^2 in float64, shift = first row (the "shifted
    # data" algorithm: no cancellation when |mean| >> std). Row blocks -> partial sums.
    shift = np.empty(c, dtype=np.float64)
    for j in range(c):
        shift[j] = x[0, j]
    s1 = np.zeros((nb, c), dtype=np.float64)
    s2 = np.zeros((nb, c), dtype=np.float64)
    for blk in prange(nb):
        a1 = s1[blk]
        a2 = s2[blk]
        for i in range(blk * n // nb, (blk + 1) * n // nb):
            xi = x[i]
            for j in range(c):
                d = np.float64(xi[j]) - shift[j]
                a1[j] += d
                a2[j] += d * d
    # Merge in block order; per-feature statistics and running averages.
    scale = np.empty_like(gamma)
    first = np.empty_like(gamma)  # x[0] (exact in x's dtype), copied: out may be x
    shifted_mean = np.empty_like(gamma)
    for j in range(c):
        t1 = 0.0
        t2 = 0.0
        for blk in range(nb):
            t1 += s1[blk, j]
            t2 += s2[blk, j]
        m1 = t1 / n
        var = t2 / n - m1 * m1
        if var < 0.0:
            var = 0.0
        mean = shift[j] + m1
        first[j] = x[0, j]
        shifted_mean[j] = m1
        invstd = 1.0 / math.sqrt(var + eps)
        save_mean[j] = mean
        save_invstd[j] = invstd
        scale[j] = save_invstd[j] * gamma[j]
        running_mean[j] = (1.0 - momentum) * running_mean[j] + momentum * mean
        running_var[j] = (1.0 - momentum) * running_var[j] + momentum * (var * (n / (n - 1)))
    # Pass 2: normalize, scale, shift (+ ReLU). Centered as (x - x[0]) - shifted mean, as
    # the reference: x - mean in float32 would carry mean's rounding (half an ulp of |mean|).
    # In place through one name (see _k_bias_activation_forward).
    zero = x.dtype.type(0)
    if inplace:
        for i in prange(n):
            xi = x[i]
            for j in range(c):
                xi[j] = _relu_if(relu, ((xi[j] - first[j]) - shifted_mean[j]) * scale[j]
                                 + beta[j], zero)
    else:
        for i in prange(n):
            xi = x[i]
            oi = out[i]
            for j in range(c):
                oi[j] = _relu_if(relu, ((xi[j] - first[j]) - shifted_mean[j]) * scale[j]
                                 + beta[j], zero)


def _k_batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps, relu, out,
                              inplace):
    n, c = x.shape
    scale = np.empty_like(gamma)
    for j in range(c):
        scale[j] = gamma[j] / math.sqrt(running_var[j] + eps)
    zero = x.dtype.type(0)
    if inplace:
        for i in prange(n):
            xi = x[i]
            for j in range(c):
                xi[j] = _relu_if(relu, (xi[j] - running_mean[j]) * scale[j] + beta[j], zero)
    else:
        for i in prange(n):
            xi = x[i]
            oi = out[i]
            for j in range(c):
                oi[j] = _relu_if(relu, (xi[j] - running_mean[j]) * scale[j] + beta[j], zero)


def _k_batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu, out, dgamma, dbeta,
                          inplace):
    n, c = x.shape
    nb = _reduction_blocks(n)
    zero = x.dtype.type(0)
    # Pass 1: sum dy and sum dy * xhat per feature (float64 partials per row block).
    s_dy = np.zeros((nb, c), dtype=np.float64)
    s_dyx = np.zeros((nb, c), dtype=np.float64)
    for blk in prange(nb):
        a1 = s_dy[blk]
        a2 = s_dyx[blk]
        for i in range(blk * n // nb, (blk + 1) * n // nb):
            xi = x[i]
            di = dy[i]
            for j in range(c):
                xh = (xi[j] - mean[j]) * invstd[j]
                d = di[j]
                if relu and not (xh * gamma[j] + beta[j] > zero):
                    d = zero
                a1[j] += d
                a2[j] += np.float64(d) * np.float64(xh)
    k = np.empty_like(gamma)
    nf = x.dtype.type(n)
    for j in range(c):
        t1 = 0.0
        t2 = 0.0
        for blk in range(nb):
            t1 += s_dy[blk, j]
            t2 += s_dyx[blk, j]
        dbeta[j] = t1
        dgamma[j] = t2
        k[j] = gamma[j] * invstd[j] / nf
    # Pass 2: dx; in place on dy through one name (see _k_bias_activation_forward).
    if inplace:
        for i in prange(n):
            xi = x[i]
            di = dy[i]
            for j in range(c):
                di[j] = _bn_input_grad(xi[j], di[j], mean[j], invstd[j], gamma[j], beta[j],
                                       k[j], nf, dbeta[j], dgamma[j], relu, zero)
    else:
        for i in prange(n):
            xi = x[i]
            di = dy[i]
            oi = out[i]
            for j in range(c):
                oi[j] = _bn_input_grad(xi[j], di[j], mean[j], invstd[j], gamma[j], beta[j],
                                       k[j], nf, dbeta[j], dgamma[j], relu, zero)


def _k_softmax_cross_entropy(logits, labels, dlogits, row_loss):
    n, k = logits.shape
    nf = logits.dtype.type(n)
    zero = logits.dtype.type(0)
    one = logits.dtype.type(1)
    for i in prange(n):
        z = logits[i]
        g = dlogits[i]
        m = z[0]
        for j in range(1, k):
            if z[j] > m:
                m = z[j]
        s = 0.0
        for j in range(k):
            e = math.exp(z[j] - m)
            g[j] = e
            s += e
        inv = logits.dtype.type(1.0 / s)
        label = labels[i]
        for j in range(k):
            g[j] = (g[j] * inv - (one if j == label else zero)) / nf
        if 0 <= label < k:
            row_loss[i] = math.log(s) - (np.float64(z[label]) - np.float64(m))
        else:  # never read outside the row; the caller raises
            row_loss[i] = np.nan


def _k_sgd_update(param, grad, momentum_buffer, lr, momentum, one_minus_dampening,
                  weight_decay, use_weight_decay, use_momentum, nesterov, first_step):
    for i in prange(param.shape[0]):
        p = param[i]
        g = grad[i]
        if use_weight_decay:
            g = g + weight_decay * p
        if use_momentum:
            if first_step:
                buf = g
            else:
                buf = momentum * momentum_buffer[i] + one_minus_dampening * g
            momentum_buffer[i] = buf
            direction = g + momentum * buf if nesterov else buf
        else:
            direction = g
        param[i] = p - lr * direction


def _k_adam_update(param, grad, exp_avg, exp_avg_sq, beta1, one_minus_beta1, beta2,
                   one_minus_beta2, step_size, bias_correction2_sqrt, eps, weight_decay,
                   decay_factor, mode):
    # mode 0: no weight decay; 1: L2 added to the gradient (Adam); 2: decoupled (AdamW).
    for i in prange(param.shape[0]):
        p = param[i]
        g = grad[i]
        if mode == 2:
            p = p * decay_factor
        elif mode == 1:
            g = g + weight_decay * p
        m = beta1 * exp_avg[i] + one_minus_beta1 * g
        v = beta2 * exp_avg_sq[i] + one_minus_beta2 * (g * g)
        exp_avg[i] = m
        exp_avg_sq[i] = v
        denom = math.sqrt(v) / bias_correction2_sqrt + eps
        param[i] = p - step_size * (m / denom)


def _k_rmsprop_update(param, grad, square_avg, momentum_buffer, grad_avg, lr, alpha,
                      one_minus_alpha, eps, weight_decay, use_weight_decay, momentum,
                      use_momentum, centered):
    for i in prange(param.shape[0]):
        p = param[i]
        g = grad[i]
        if use_weight_decay:
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
            buf = momentum * momentum_buffer[i] + g / avg
            momentum_buffer[i] = buf
            param[i] = p - lr * buf
        else:
            param[i] = p - lr * (g / avg)


def _k_adagrad_update(param, grad, state_sum, clr, eps, weight_decay, use_weight_decay):
    for i in prange(param.shape[0]):
        p = param[i]
        g = grad[i]
        if use_weight_decay:
            g = g + weight_decay * p
        s = state_sum[i] + g * g
        state_sum[i] = s
        param[i] = p - clr * (g / (math.sqrt(s) + eps))


def _k_adadelta_update(param, grad, square_avg, acc_delta, lr, rho, one_minus_rho, eps,
                       weight_decay, use_weight_decay):
    for i in prange(param.shape[0]):
        p = param[i]
        g = grad[i]
        if use_weight_decay:
            g = g + weight_decay * p
        v = rho * square_avg[i] + one_minus_rho * (g * g)
        square_avg[i] = v
        u = acc_delta[i]
        delta = math.sqrt(u + eps) / math.sqrt(v + eps) * g
        acc_delta[i] = rho * u + one_minus_rho * (delta * delta)
        param[i] = p - lr * delta


_HELPERS = ("_reduction_blocks", "_relu_if", "_bn_input_grad")
_KERNELS = ("activation_forward", "bias_activation_forward", "bias_add",
            "nonpositive_part", "elu_from_expm1", "elu_backward_from_exp", "logistic_from_exp",
            "activation_backward",
            "batchnorm_forward_train", "batchnorm_forward_eval", "batchnorm_backward",
            "softmax_cross_entropy", "sgd_update", "adam_update", "rmsprop_update",
            "adagrad_update", "adadelta_update")


# =======================================================================================
# Lazy build: cache directory, threading layer, jitted serial/parallel variants.
# =======================================================================================

_build_lock = threading.Lock()
_built = {}
_cache_state = {}


def _writable_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
        return True
    except OSError:
        return False


def _choose_cache_dir():
    """Pick (once) the directory Numba caches these kernels in; ``None`` disables caching.

    Order: ``NUMBA_CACHE_DIR`` if the user set it; else Numba's in-tree ``__pycache__``
    beside this file when writable; else ``$XDG_CACHE_HOME/dualnn/numba`` (default
    ``~/.cache/dualnn/numba``); else ``<tmp>/dualnn-numba-<user>``. In the last two cases
    ``NUMBA_CACHE_DIR`` is set for this process (Numba otherwise fails to decorate a
    ``cache=True`` function when no location is writable).
    """
    if "dir" in _cache_state:
        return _cache_state["dir"]
    chosen = None
    user_dir = os.environ.get("NUMBA_CACHE_DIR")
    if user_dir:
        chosen = user_dir
    else:
        in_tree = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")
        if _writable_dir(in_tree):
            chosen = in_tree
        else:
            xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(
                os.path.expanduser("~"), ".cache")
            who = str(os.getuid()) if hasattr(os, "getuid") else "user"
            for candidate in (os.path.join(xdg, "dualnn", "numba"),
                              os.path.join(tempfile.gettempdir(), f"dualnn-numba-{who}")):
                if _writable_dir(candidate):
                    chosen = candidate
                    os.environ["NUMBA_CACHE_DIR"] = candidate
                    break
    _cache_state["dir"] = chosen
    return chosen


def cache_dir():
    """Where the compiled kernels are cached (a directory path), or ``None`` if nowhere.

    Does not import Numba or compile anything. With ``NUMBA_CACHE_DIR`` set, Numba files
    the cache in a subdirectory of it named after this package's path.
    """
    chosen = _choose_cache_dir()
    if _cache_state.get("disabled"):
        return None
    return chosen


def _variant(fn, namespace, suffix):
    """A copy of ``fn`` resolving globals in ``namespace`` and with its own cache name."""
    copy = types.FunctionType(fn.__code__, namespace, fn.__name__ + suffix, fn.__defaults__,
                              fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__module__ = fn.__module__
    copy.__doc__ = fn.__doc__
    return copy


def _build():
    """Import Numba and wrap every kernel (compilation happens per signature, on call)."""
    cache_path = _choose_cache_dir()
    import numba

    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
    if cache_path and os.environ.get("NUMBA_CACHE_DIR") == cache_path:
        numba.config.CACHE_DIR = cache_path  # numba may have been imported before we set it
    namespace = dict(globals())
    namespace["prange"] = numba.prange
    for name in _HELPERS:
        namespace[name] = numba.njit(inline="always", error_model="numpy")(
            _variant(globals()[name], namespace, ""))

    use_cache = cache_path is not None

    def jit(fn, parallel):
        nonlocal use_cache
        options = dict(nogil=True, error_model="numpy", parallel=parallel)
        if use_cache:
            try:
                return numba.njit(cache=True, **options)(fn)
            except RuntimeError:  # "no locator available": nowhere writable after all
                use_cache = False
                _cache_state["disabled"] = True
        return numba.njit(cache=False, **options)(fn)

    kernels = {}
    for name in _KERNELS:
        source = globals()["_k_" + name]
        kernels[name] = (jit(_variant(source, namespace, "_serial"), False),
                         jit(_variant(source, namespace, "_parallel"), True))
    if cache_path is None:
        _cache_state["disabled"] = True
    return kernels


def _kernel(name, size, threshold=PARALLEL_THRESHOLD):
    """The jitted kernel ``name``: its parallel build when ``size >= threshold``."""
    if not _built:
        with _build_lock:
            if not _built:
                _built.update(_build())
    serial, parallel = _built[name]
    return parallel if size >= threshold else serial


# =======================================================================================
# Public entry points: check, cast scalars, pick a build, call.
# =======================================================================================

def _check(reference_array, *arrays, shapes=None):
    """Raise ``ValueError`` unless every array is a C-contiguous float array of one dtype."""
    dtype = reference_array.dtype
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"fused CPU kernels take float32 or float64 arrays, got {dtype}")
    for i, a in enumerate((reference_array,) + arrays):
        if not isinstance(a, np.ndarray):
            raise ValueError(f"expected a NumPy array, got {type(a).__name__}")
        if a.dtype != dtype:
            raise ValueError(f"dtype mismatch: {a.dtype} and {dtype}")
        if not a.flags.c_contiguous:
            raise ValueError("fused CPU kernels take C-contiguous arrays")
        if shapes is not None and a.shape != shapes[i]:
            raise ValueError(f"expected shape {shapes[i]}, got {a.shape}")


def _same_memory(a, out):
    """True when ``out`` is ``a`` or a view of exactly its memory (the in-place call)."""
    return out is a or (out.__array_interface__["data"][0] == a.__array_interface__["data"][0])


def _kind_code(kind):
    try:
        return _KIND_CODES[kind]
    except KeyError:
        raise ValueError(f"unknown activation {kind!r}; expected one of {ACTIVATIONS}") \
            from None


def activation_forward(kind, z, alpha, out):
    """``out = act(z)`` elementwise.

    Parameters
    ----------
    kind : str
        One of :data:`dualnn.kernels.reference.ACTIVATIONS`.
    z : ndarray, any shape
        Pre-activation.
    alpha : float
        Negative slope of ``leaky_relu``; scale of ``elu``.
    out : ndarray, shape of ``z``
        Receives the result; may be ``z``.

    Returns
    -------
    out : ndarray
    """
    code = _kind_code(kind)
    _check(z, out, shapes=(z.shape, z.shape))
    if code in (SIGMOID, TANH):
        return _simd_forward(code, z, None, out)
    if code == ELU:
        flat_z = z.reshape(-1)
        e = _elu_exp(np.expm1, flat_z, FORWARD_PARALLEL_THRESHOLD)
        _kernel("elu_from_expm1", z.size, FORWARD_PARALLEL_THRESHOLD)(
            flat_z, e, z.dtype.type(alpha), out.reshape(-1), _same_memory(z, out))
        return out
    _kernel("activation_forward", z.size, FORWARD_PARALLEL_THRESHOLD)(
        code, z.reshape(-1), z.dtype.type(alpha), out.reshape(-1))
    return out


def bias_activation_forward(z, b, kind, alpha, out):
    """``out = act(z + b)``, the bias add and activation after a GEMM, in one pass.

    Parameters
    ----------
    z : ndarray, shape (n, c)
        ``x @ W.T``.
    b : ndarray, shape (c,), or None
        Bias broadcast over the rows; ``None`` skips the add.
    kind : str
        Activation (see :func:`activation_forward`).
    alpha : float
    out : ndarray, shape (n, c)
        Receives the result; may be ``z`` (in place after the GEMM).

    Returns
    -------
    out : ndarray
    """
    if b is None:
        return activation_forward(kind, z, alpha, out)
    code = _kind_code(kind)
    if z.ndim != 2:
        raise ValueError(f"z must be 2-D (batch, features), got shape {z.shape}")
    _check(z, b, out, shapes=(z.shape, (z.shape[1],), z.shape))
    if code in (SIGMOID, TANH):
        return _simd_forward(code, z, b, out)
    if code == ELU:
        _kernel("bias_add", z.size, FORWARD_PARALLEL_THRESHOLD)(z, b, out, _same_memory(z, out))
        return activation_forward(kind, out, alpha, out)
    if not _same_memory(z, out):
        np.copyto(out, z)  # the kernel works in place; dualnn's layers always call it so
    _kernel("bias_activation_forward", z.size, FORWARD_PARALLEL_THRESHOLD)(
        code, out, b, z.dtype.type(alpha))
    return out


def _simd_forward(code, z, b, out):
    r"""``out = act(z + b)`` for sigmoid and tanh through NumPy's SIMD ``exp`` / ``tanh``.

    Numba calls the scalar libm ``exp``/``tanh`` (PyPI's llvmlite has no vector math
    library): ~6 ns per element and core here, against ~0.5 ns for NumPy's SIMD loops. So
    a Numba pass adds the bias (if any), NumPy's ufunc runs on all cores
    (:func:`split_ufunc`), and for sigmoid a last Numba pass divides:

    .. math::
        \sigma(v) = \frac{e}{1 + e}, \quad e = \exp(v)

    where ``exp`` overflows (``v`` above ~88.7 in float32, ~709.8 in float64) ``e = inf``
    gives exactly 1, as the reference's ``1 / (1 + exp(-v))`` rounds to; ``exp(-inf) = 0``
    gives 0 and NaN stays NaN.

    Parameters
    ----------
    code : SIGMOID or TANH
    z : ndarray, any shape (2-D ``(n, c)`` when ``b`` is given)
    b : ndarray, shape (c,), or None
    out : ndarray, shape of ``z``
        Receives the result; may be ``z``.
    """
    flat = out.reshape(-1)
    source = z.reshape(-1)
    if b is not None:
        _kernel("bias_add", out.size, FORWARD_PARALLEL_THRESHOLD)(z, b, out,
                                                                 _same_memory(z, out))
        source = flat
    split_ufunc(np.tanh if code == TANH else np.exp, source, flat)
    if code == SIGMOID:
        _kernel("logistic_from_exp", out.size, FORWARD_PARALLEL_THRESHOLD)(flat)
    return out


def _elu_exp(ufunc, z, threshold):
    """``ufunc(min(z, 0))`` (``np.exp`` or ``np.expm1``) in this thread's scratch array."""
    e = _scratch(z.size, z.dtype)
    _kernel("nonpositive_part", z.size, threshold)(z, e)
    return split_ufunc(ufunc, e)


_scratch_arrays = threading.local()


def _scratch(size, dtype):
    """A 1-D work array of ``size`` elements, reused by later calls from this thread."""
    arrays = _scratch_arrays.__dict__
    buffer = arrays.get(dtype)
    if buffer is None or buffer.size < size:
        buffer = arrays[dtype] = np.empty(size, dtype=dtype)
    return buffer[:size]


_ufunc_pool = None
_ufunc_pool_lock = threading.Lock()


def _forget_ufunc_pool():
    """In a forked child: the parent's pool threads do not exist there; start afresh."""
    global _ufunc_pool, _ufunc_pool_lock
    _ufunc_pool = None
    _ufunc_pool_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_ufunc_pool)


def _quiet_ufunc(ufunc, a, out):
    """``ufunc(a, out=out)`` without NumPy's overflow warning (``exp`` may overflow to inf
    by design; NumPy's error state is per thread, so it is set where the ufunc runs)."""
    with np.errstate(over="ignore"):
        ufunc(a, out=out)


def split_ufunc(ufunc, a, out=None):
    """``ufunc(a, out=out)`` (``out`` defaults to ``a``) on 1-D arrays, in contiguous parts
    on a pool of threads.

    NumPy's SIMD loops run on one core and release the GIL, so from
    :data:`FORWARD_PARALLEL_THRESHOLD` elements the array is cut into one part per Numba
    thread and the parts run at once (the pool's threads sleep between calls). Results are
    those of one call: the ufunc is elementwise.
    """
    global _ufunc_pool
    out = a if out is None else out
    parts = 1
    if a.size >= FORWARD_PARALLEL_THRESHOLD:
        import numba

        parts = numba.get_num_threads()
    if parts < 2:
        _quiet_ufunc(ufunc, a, out)
        return out
    if _ufunc_pool is None:
        with _ufunc_pool_lock:
            if _ufunc_pool is None:
                from concurrent.futures import ThreadPoolExecutor

                _ufunc_pool = ThreadPoolExecutor(parts, thread_name_prefix="dualnn-ufunc")
    bounds = [a.size * k // parts for k in range(parts + 1)]
    futures = [_ufunc_pool.submit(_quiet_ufunc, ufunc, a[lo:hi], out[lo:hi])
               for lo, hi in zip(bounds[:-1], bounds[1:])]
    for future in futures:
        future.result()
    return out


def activation_backward(kind, dy, saved, alpha, out):
    """``out = dy * f'(.)`` elementwise, in one pass.

    Parameters
    ----------
    kind : str
        Activation. ``saved`` is its input ``z`` for ``relu``, ``leaky_relu`` and ``elu``,
        its output ``y`` for ``sigmoid``, ``tanh`` and ``identity``.
    dy, saved : ndarray, same shape
    alpha : float
    out : ndarray, shape of ``dy``
        Receives ``dz``; may be ``dy`` (in-place backward).

    Returns
    -------
    out : ndarray
    """
    code = _kind_code(kind)
    _check(dy, saved, out, shapes=(dy.shape,) * 3)
    if code == ELU:  # exp through NumPy's SIMD loop (see _simd_forward)
        flat_z = saved.reshape(-1)
        e = _elu_exp(np.exp, flat_z, BACKWARD_PARALLEL_THRESHOLD)
        _kernel("elu_backward_from_exp", dy.size, BACKWARD_PARALLEL_THRESHOLD)(
            dy.reshape(-1), flat_z, e, dy.dtype.type(alpha), out.reshape(-1),
            _same_memory(dy, out))
        return out
    _kernel("activation_backward", dy.size, BACKWARD_PARALLEL_THRESHOLD)(
        code, dy.reshape(-1), saved.reshape(-1), dy.dtype.type(alpha), out.reshape(-1))
    return out


def batchnorm_forward_train(x, gamma, beta, running_mean, running_var, eps, momentum, relu,
                            out, save_mean, save_invstd):
    r"""Training-mode batch normalization (+ optional ReLU); updates running stats in place.

    .. math::
        \hat x = (x - \mu) / \sqrt{\sigma^2 + \epsilon}, \quad y = \gamma \hat x + \beta

    with the biased batch variance; ``running_var`` moves towards the unbiased one
    (PyTorch's momentum convention). Mean and variance come from one pass of shifted sums
    accumulated in float64 (stable when ``|mean| >> std``).

    Parameters
    ----------
    x : ndarray, shape (n, c), n >= 2
    gamma, beta : ndarray, shape (c,)
    running_mean, running_var : ndarray, shape (c,)
        Updated in place.
    eps, momentum : float
    relu : bool
        Output ``max(y, 0)``.
    out : ndarray, shape (n, c)
        Receives ``y``; may be ``x``.
    save_mean, save_invstd : ndarray, shape (c,)
        Receive the batch mean and ``1 / sqrt(var + eps)`` for the backward pass.

    Returns
    -------
    out, save_mean, save_invstd : ndarray
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"x must be 2-D with at least 2 rows, got shape {x.shape}")
    c = (x.shape[1],)
    _check(x, gamma, beta, running_mean, running_var, out, save_mean, save_invstd,
           shapes=(x.shape, c, c, c, c, x.shape, c, c))
    _kernel("batchnorm_forward_train", x.size, FORWARD_PARALLEL_THRESHOLD)(
        x, gamma, beta, running_mean, running_var, float(eps), float(momentum), bool(relu),
        out, save_mean, save_invstd, _same_memory(x, out))
    return out, save_mean, save_invstd


def batchnorm_forward_eval(x, gamma, beta, running_mean, running_var, eps, relu, out):
    """Inference-mode batch normalization with the running statistics, one pass.

    Parameters
    ----------
    x : ndarray, shape (n, c), any n
    gamma, beta, running_mean, running_var : ndarray, shape (c,)
    eps : float
    relu : bool
    out : ndarray, shape (n, c)
        Receives ``y``; may be ``x``.

    Returns
    -------
    out : ndarray
    """
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D, got shape {x.shape}")
    c = (x.shape[1],)
    _check(x, gamma, beta, running_mean, running_var, out,
           shapes=(x.shape, c, c, c, c, x.shape))
    _kernel("batchnorm_forward_eval", x.size, FORWARD_PARALLEL_THRESHOLD)(
        x, gamma, beta, running_mean, running_var, x.dtype.type(eps), bool(relu), out,
        _same_memory(x, out))
    return out


def batchnorm_backward(dy, x, gamma, beta, mean, invstd, relu, out, dgamma, dbeta):
    r"""Gradients of training-mode batch normalization (+ optional fused ReLU).

    .. math::
        d\beta = \sum_n dy, \quad d\gamma = \sum_n dy\,\hat x, \quad
        dx = \frac{\gamma\,\mathrm{invstd}}{n}\,(n\,dy - d\beta - \hat x\, d\gamma)

    With ``relu=True`` ``dy`` is first masked where ``gamma * xhat + beta <= 0`` (recomputed
    inside both passes, never stored).

    Parameters
    ----------
    dy, x : ndarray, shape (n, c)
    gamma, beta, mean, invstd : ndarray, shape (c,)
    relu : bool
    out : ndarray, shape (n, c)
        Receives ``dx``; may be ``dy``.
    dgamma, dbeta : ndarray, shape (c,)
        Receive the parameter gradients (overwritten, not accumulated).

    Returns
    -------
    out, dgamma, dbeta : ndarray
    """
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D, got shape {x.shape}")
    c = (x.shape[1],)
    _check(x, dy, gamma, beta, mean, invstd, out, dgamma, dbeta,
           shapes=(x.shape, x.shape, c, c, c, c, x.shape, c, c))
    _kernel("batchnorm_backward", x.size, COMPUTE_PARALLEL_THRESHOLD)(
        dy, x, gamma, beta, mean, invstd, bool(relu), out, dgamma, dbeta,
        _same_memory(dy, out))
    return out, dgamma, dbeta


def softmax_cross_entropy(logits, labels, dlogits):
    """Mean softmax cross-entropy; ``dlogits`` receives its gradient. One pass per row.

    Parameters
    ----------
    logits : ndarray, shape (n, k), n >= 1, k >= 1
    labels : integer ndarray, shape (n,), values in [0, k)
    dlogits : ndarray, shape (n, k)
        Receives ``(softmax(logits) - onehot(labels)) / n``; may be ``logits``.

    Returns
    -------
    loss : float
        ``-mean_i log softmax(logits)_{i, labels_i}`` (log-sum-exp in float64).

    Raises
    ------
    ValueError
        A label is outside ``[0, k)`` (checked before any row is read).
    """
    if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 1:
        raise ValueError(f"logits must be 2-D and non-empty, got shape {logits.shape}")
    n, k = logits.shape
    _check(logits, dlogits, shapes=(logits.shape, logits.shape))
    labels = np.asarray(labels)
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers of shape ({n},), got {labels.dtype} "
                         f"{labels.shape}")
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"labels must lie in [0, {k}), got values in [{lo}, {hi}]")
    row_loss = np.empty(n, dtype=np.float64)
    _kernel("softmax_cross_entropy", logits.size)(logits, labels, dlogits, row_loss)
    return float(row_loss.sum() / n)


def _flat_state(param, *arrays):
    """Flattened views of ``param`` and its same-shaped state arrays (``None`` -> empty)."""
    _check(param, *[a for a in arrays if a is not None],
           shapes=(param.shape,) * (1 + sum(a is not None for a in arrays)))
    empty = np.empty(0, dtype=param.dtype)
    return [param.reshape(-1)] + [empty if a is None else a.reshape(-1) for a in arrays]


def sgd_update(param, grad, momentum_buffer, *, lr, momentum=0.0, dampening=0.0,
               nesterov=False, weight_decay=0.0, first_step=False):
    """In-place SGD step (momentum, dampening, Nesterov, L2 weight decay) as ``torch.optim.SGD``.

    Parameters
    ----------
    param, grad : ndarray, any shape (same)
        ``param`` is updated in place.
    momentum_buffer : ndarray or None
        Updated in place; may be ``None`` when ``momentum == 0``.
    lr, momentum, dampening, nesterov, weight_decay, first_step
        As :func:`dualnn.kernels.reference.sgd_update`.
    """
    use_momentum = momentum != 0
    if use_momentum and momentum_buffer is None:
        raise ValueError("momentum != 0 needs a momentum_buffer")
    p, g, buf = _flat_state(param, grad, momentum_buffer if use_momentum else None)
    t = param.dtype.type
    _kernel("sgd_update", p.size)(
        p, g, buf, t(lr), t(momentum), t(1 - dampening), t(weight_decay),
        weight_decay != 0, use_momentum, bool(nesterov), bool(first_step))


def adam_update(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1=0.9, beta2=0.999,
                eps=1e-8, weight_decay=0.0, decoupled=False):
    """In-place Adam (L2 in the gradient) or AdamW (``decoupled=True``) step, one pass.

    Parameters
    ----------
    param, grad, exp_avg, exp_avg_sq : ndarray, any shape (same)
        ``param`` and the moments are updated in place.
    step : int
        This update's number, counting from 1.
    lr, beta1, beta2, eps, weight_decay, decoupled
        As :func:`dualnn.kernels.reference.adam_update`.
    """
    p, g, m, v = _flat_state(param, grad, exp_avg, exp_avg_sq)
    t = param.dtype.type
    mode = 0 if weight_decay == 0 else (2 if decoupled else 1)
    _kernel("adam_update", p.size, COMPUTE_PARALLEL_THRESHOLD)(
        p, g, m, v, t(beta1), t(1 - beta1), t(beta2), t(1 - beta2),
        t(lr / (1 - beta1 ** step)), t(math.sqrt(1 - beta2 ** step)), t(eps),
        t(weight_decay), t(1 - lr * weight_decay), mode)


def rmsprop_update(param, grad, square_avg, momentum_buffer, grad_avg, *, lr, alpha=0.99,
                   eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
    """In-place RMSprop step (optional momentum and centering) as ``torch.optim.RMSprop``.

    Parameters
    ----------
    param, grad, square_avg : ndarray, any shape (same)
    momentum_buffer : ndarray or None
        Needed when ``momentum > 0``.
    grad_avg : ndarray or None
        Needed when ``centered``.
    lr, alpha, eps, weight_decay, momentum, centered
        As :func:`dualnn.kernels.reference.rmsprop_update`.
    """
    use_momentum = momentum > 0
    if use_momentum and momentum_buffer is None:
        raise ValueError("momentum > 0 needs a momentum_buffer")
    if centered and grad_avg is None:
        raise ValueError("centered=True needs grad_avg")
    p, g, sa, buf, ga = _flat_state(param, grad, square_avg,
                                    momentum_buffer if use_momentum else None,
                                    grad_avg if centered else None)
    t = param.dtype.type
    _kernel("rmsprop_update", p.size)(
        p, g, sa, buf, ga, t(lr), t(alpha), t(1 - alpha), t(eps), t(weight_decay),
        weight_decay != 0, t(momentum), use_momentum, bool(centered))


def adagrad_update(param, grad, state_sum, *, step, lr, lr_decay=0.0, weight_decay=0.0,
                   eps=1e-10):
    """In-place Adagrad step as ``torch.optim.Adagrad``.

    Parameters
    ----------
    param, grad, state_sum : ndarray, any shape (same)
    step, lr, lr_decay, weight_decay, eps
        As :func:`dualnn.kernels.reference.adagrad_update`.
    """
    p, g, s = _flat_state(param, grad, state_sum)
    t = param.dtype.type
    _kernel("adagrad_update", p.size)(
        p, g, s, t(lr / (1 + (step - 1) * lr_decay)), t(eps), t(weight_decay),
        weight_decay != 0)


def adadelta_update(param, grad, square_avg, acc_delta, *, lr=1.0, rho=0.9, eps=1e-6,
                    weight_decay=0.0):
    """In-place Adadelta step as ``torch.optim.Adadelta``.

    Parameters
    ----------
    param, grad, square_avg, acc_delta : ndarray, any shape (same)
    lr, rho, eps, weight_decay
        As :func:`dualnn.kernels.reference.adadelta_update`.
    """
    p, g, v, u = _flat_state(param, grad, square_avg, acc_delta)
    t = param.dtype.type
    _kernel("adadelta_update", p.size)(
        p, g, v, u, t(lr), t(rho), t(1 - rho), t(eps), t(weight_decay), weight_decay != 0)
