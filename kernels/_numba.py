"""Shared machinery of the Numba CPU kernels: lazy build, on-disk cache, size thresholds.

Each family's ``cpu.py`` writes its kernels as plain Python functions named ``_k_<name>``
(they run unjitted too, slowly) and wraps them in a :class:`KernelSet`. Nothing here
imports Numba until a kernel is first called; the first call of a family builds all its
kernels (``cache=True``, see :func:`cache_dir`) and compiles the signatures it needs.

Each kernel has a serial and a parallel build (the same source; ``prange`` is ``range``
in the serial one); the size thresholds below pick one. Reductions split the rows into a
number of blocks that depends only on the batch size and merge the partial sums in block
order, so results are bit-identical between calls, between the serial and parallel
builds, and for any thread count. Timings behind the thresholds are in
``docs/performance.md``.
"""

from __future__ import annotations

import os
import tempfile
import threading
import types

import numpy as np

from .ops import FLOAT_DTYPES

PARALLEL_THRESHOLD = 1 << 20
"""Elements from which softmax cross-entropy and the SGD/RMSprop/Adagrad/Adadelta updates
run their parallel build (below ~1M elements right after a GEMM, serial wins)."""

FORWARD_PARALLEL_THRESHOLD = 1 << 18
"""Elements from which the activation, bias + activation and batch-norm forward kernels
run their parallel build (the measured crossover on (n, 1024) float32 is near n=256)."""

BACKWARD_PARALLEL_THRESHOLD = 1 << 16
"""Elements from which the activation backward kernel runs its parallel build."""

COMPUTE_PARALLEL_THRESHOLD = 1 << 14
"""Elements from which the compute-bound kernels (batch-norm backward, Adam) run their
parallel build; below ~16k elements the thread start-up costs more than the work."""

_FLOAT_DTYPES = tuple(np.dtype(name) for name in FLOAT_DTYPES)

prange = range  # replaced by numba.prange in the namespace the kernels are compiled in

_numba_setup_lock = threading.Lock()
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



DEFAULT_LAYER_PRIORITY = ("omp", "tbb", "workqueue")

_policy = {"hook": None, "parallel": True}


def set_policy_hook(hook):
    """Register ``hook(numba) -> {"parallel": bool, ...}``, called once before the first
    kernel is built (before Numba's threading layer starts).

    The hook may set ``numba.config.THREADING_LAYER_PRIORITY``; ``parallel=False`` makes
    :meth:`KernelSet.get` return serial builds only. Without a hook the priority is
    :data:`DEFAULT_LAYER_PRIORITY` and parallel builds are allowed.
    """
    _policy["hook"] = hook


def parallel_enabled():
    """Whether kernels may run their parallel builds (the thread policy's choice)."""
    return _policy["parallel"]


def numba_module():
    """Numba, configured (threading-layer priority, cache directory, the policy hook)."""
    return _numba()


def start_threading_layer():
    """Run a tiny parallel kernel so Numba's threading layer starts; returns its name."""
    numba = _numba()
    if "start" not in _policy:
        def _k_start(out):
            for i in numba.prange(out.size):
                out[i] = i

        _policy["start"] = numba.njit(parallel=True, cache=False)(_k_start)
    _policy["start"](np.zeros(4))
    return numba.threading_layer()


def _numba():
    """Import Numba (once) with the threading layer and cache directory set."""
    cache_path = _choose_cache_dir()
    import numba

    with _numba_setup_lock:
        if not _cache_state.get("configured"):
            if "NUMBA_THREADING_LAYER" not in os.environ:
                numba.config.THREADING_LAYER_PRIORITY = list(DEFAULT_LAYER_PRIORITY)
            if _policy["hook"] is not None:
                decision = _policy["hook"](numba)
                _policy["parallel"] = bool(decision.get("parallel", True))
            if cache_path and os.environ.get("NUMBA_CACHE_DIR") == cache_path:
                numba.config.CACHE_DIR = cache_path  # numba may have been imported first
            if cache_path is None:
                _cache_state["disabled"] = True
            _cache_state["configured"] = True
    return numba


def _jit(numba, fn, parallel):
    options = {"nogil": True, "error_model": "numpy", "parallel": parallel}
    if not _cache_state.get("disabled") and _choose_cache_dir() is not None:
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # "no locator available": nowhere writable after all
            _cache_state["disabled"] = True
    return numba.njit(cache=False, **options)(fn)


class KernelSet:
    """The kernels of one op family, built on first use.

    Parameters
    ----------
    namespace : dict
        The family module's ``globals()``: the kernel sources ``_k_<name>`` and whatever
        they name (constants, helpers).
    kernels : tuple of str
        Kernel names (sources are ``namespace["_k_" + name]``).
    helpers : tuple of str
        Functions the kernels call; compiled ``inline="always"``.
    """

    def __init__(self, namespace, kernels, helpers=()):
        self._namespace = namespace
        self.names = tuple(kernels)
        self._helpers = tuple(helpers)
        self._built = {}
        self._lock = threading.Lock()

    def _build(self):
        numba = _numba()
        namespace = dict(self._namespace)
        namespace["prange"] = numba.prange
        for name in self._helpers:
            namespace[name] = numba.njit(inline="always", error_model="numpy")(
                _variant(self._namespace[name], namespace, ""))
        built = {}
        for name in self.names:
            source = self._namespace["_k_" + name]
            built[name] = (_jit(numba, _variant(source, namespace, "_serial"), False),
                           _jit(numba, _variant(source, namespace, "_parallel"), True))
        return built

    def get(self, name, size, threshold=PARALLEL_THRESHOLD):
        """The jitted kernel ``name``: its parallel build when ``size >= threshold``."""
        if not self._built:
            with self._lock:
                if not self._built:
                    self._built.update(self._build())
        serial, parallel = self._built[name]
        return parallel if size >= threshold and _policy["parallel"] else serial


def check(reference_array, *arrays, shapes=None, outputs=()):
    """Raise ``ValueError`` unless every array is a C-contiguous float array of one dtype.

    Parameters
    ----------
    reference_array, *arrays : ndarray
    shapes : sequence of tuple, optional
        Expected shape of each array, in order.
    outputs : sequence of ndarray
        Arrays the kernel writes: they must also be writable.
    """
    dtype = getattr(reference_array, "dtype", None)
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"fused CPU kernels take float32 or float64 arrays, got {dtype}")
    for i, a in enumerate((reference_array,) + arrays):
        if not isinstance(a, np.ndarray):
            raise ValueError(f"expected a NumPy array, got {type(a).__name__}")  # noqa: TRY004
        if a.dtype != dtype:
            raise ValueError(f"dtype mismatch: {a.dtype} and {dtype}")
        if not a.flags.c_contiguous:
            raise ValueError("fused CPU kernels take C-contiguous arrays")
        if shapes is not None and a.shape != shapes[i]:
            raise ValueError(f"expected shape {shapes[i]}, got {a.shape}")
    for a in outputs:
        if not a.flags.writeable:
            raise ValueError("an output array of a fused CPU kernel is read-only")


def same_memory(a, out):
    """True when ``out`` is ``a`` or a view of exactly its memory (the in-place call)."""
    return out is a or (out.__array_interface__["data"][0] == a.__array_interface__["data"][0])


def writable_input(a):
    """``a``, or a copy of it when it is read-only.

    For inputs a kernel may also write through in its in-place branch (``out is a``):
    Numba types that branch for every call, and cannot type a write to a read-only array.
    Read-only inputs (``np.load(..., mmap_mode="r")``, ``setflags(write=False)``) are rare
    and never the output, so copying them is cheaper than a second compiled kernel.
    """
    return a if a.flags.writeable else np.array(a, order="C")
