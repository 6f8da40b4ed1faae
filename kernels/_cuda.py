"""Shared machinery of the Numba-CUDA kernels: lazy import, launch geometry, the argument
check, streams, compilation for explicit signatures.

- ``numba.cuda`` is imported lazily: importing ``dualnn`` or any kernel module never
  touches the CUDA driver. Kernels compile on their first launch, for one explicit
  signature per dtype (float32 or float64, C-contiguous; the kernels a family lists in
  its ``HALF_DTYPES`` also float16 and/or bfloat16 as uint16 bits, computing in float32),
  once, and are cached.
- A compiled kernel does not type-check its arguments, so every launcher runs
  :func:`check` (dtype, C-contiguity, shape, array library) before launching and raises
  ``TypeError``/``ValueError`` instead of computing garbage.
- Nothing is allocated by a launcher: outputs and scratch come from the caller.
- With CuPy arrays a kernel runs on CuPy's current stream (a cached
  ``cuda.external_stream``); with NumPy arrays (simulator only) on the default stream.

Each family's ``cuda.py`` declares a :class:`KernelFamily`: a factory building its kernel
functions for one float dtype and the explicit signature of each kernel.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .ops import BFLOAT16_STORAGE, COMPUTE_DTYPE, FLOAT_DTYPES, LABEL_DTYPES, STORAGE_TYPE


@dataclass
class LaunchConfig:
    """Launch geometry of the kernels.

    Attributes
    ----------
    block : int
        Threads per block of the elementwise (grid-stride) kernels.
    max_blocks : int
        Cap on the blocks of a grid-stride launch; larger inputs loop. :func:`grid_stride`
        also caps at ``blocks_per_sm`` blocks per multiprocessor (whichever is smaller).
    bn_block_features, bn_block_slices : int
        Block shape (features x row slices) of the batch-norm reduction kernels.
    bn_rows_per_slice : int
        Target rows each thread of a batch-norm reduction walks; sets the number of
        row slices ``S = ceil(n / bn_rows_per_slice)`` (capped by ``bn_max_slices``).
    bn_max_slices : int
    reduce_block : int
        Threads of the one-block loss-mean reduction (a power of two, <= 256).
    blocks_per_sm : int
        Blocks per multiprocessor of a grid-stride launch (:func:`grid_stride`): 8 blocks
        of 256 threads fill the 2048 thread slots of an H100 (or A100) SM in one wave.
    xent_warp_min_classes : int
        Softmax cross-entropy uses one warp per row from this many classes up, one thread
        per row below (see ``docs/gpu_performance.md``).
    """

    block: int = 256
    max_blocks: int = 4096
    bn_block_features: int = 32
    bn_block_slices: int = 8
    bn_rows_per_slice: int = 8
    bn_max_slices: int = 128
    reduce_block: int = 256
    blocks_per_sm: int = 8
    xent_warp_min_classes: int = 16


config = LaunchConfig()
"""The launch geometry every launcher reads (tests shrink it to exercise grid-stride loops)."""

_cuda = None


def numba_cuda():
    """``numba.cuda`` (the simulator when ``NUMBA_ENABLE_CUDASIM=1``), imported on first use."""
    global _cuda
    if _cuda is None:
        from numba import cuda as numba_cuda_module

        _cuda = numba_cuda_module
    return _cuda


def simulator_enabled():
    """True when Numba runs CUDA kernels in its simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    from numba import config as numba_config

    return bool(numba_config.ENABLE_CUDASIM)



def bit_casts():
    """``(bits_to_float32, float32_to_bits)``: reinterpret a 32-bit word as float32 and back.

    On the CUDA target these are libdevice's ``int_as_float`` / ``float_as_int`` (a register
    move, no conversion); the simulator has no libdevice, so there they are the exact NumPy
    equivalents. The bfloat16 kernels widen ``bits << 16`` with the first and round the
    second's result to the top 16 bits.
    """
    if simulator_enabled():
        def bits_to_float32(word):
            return np.uint32(word).view(np.float32)

        def float32_to_bits(value):
            return np.float32(value).view(np.uint32)

        return bits_to_float32, float32_to_bits
    from numba.cuda import libdevice

    return libdevice.int_as_float, libdevice.float_as_int


def dtype_constants(dtype_name):
    """``(cast, zero, one, nan)`` typed as the compute dtype of ``dtype_name``.

    Kernels capture NumPy scalars of their compute dtype, so Numba types every constant as
    that dtype and float32 kernels never promote to float64. The 16-bit variants compute
    in float32: ``cast(x[i])`` is the load-and-widen of a float16 element.
    """
    cast = getattr(np, COMPUTE_DTYPE[dtype_name])
    return cast, cast(0.0), cast(1.0), cast(np.nan)


class KernelFamily:
    """The CUDA kernels of one op family and their explicit signatures.

    Parameters
    ----------
    make_kernels : callable
        ``make_kernels(dtype_name) -> {name: python function}`` for ``"float32"`` or
        ``"float64"``.
    signatures : dict
        ``{name: signature}`` with ``{f}`` for the storage dtype of activations and
        gradients, ``{a}`` for the compute dtype (parameters, statistics, scalars; the same
        as ``{f}`` for float32/float64, float32 for the 16-bit variants) and ``{i}`` for
        the label dtype, e.g. ``"void({f}[::1], {f}[::1], int32, {a})"``.
    half_dtypes : dict, optional
        ``{name: tuple of 16-bit dtypes}`` (from :data:`~dualnn.kernels.ops.HALF_DTYPES`):
        the kernels that also have float16 / bfloat16 variants.
    """

    def __init__(self, make_kernels, signatures, half_dtypes=None):
        self._make = make_kernels
        self.signatures = dict(signatures)
        self.half_dtypes = dict(half_dtypes or {})
        self._python = {}
        self._compiled = {}
        self._lock = threading.Lock()

    def signature(self, name, dtype, label_dtype="int64"):
        """The explicit Numba signature string of kernel ``name`` for ``dtype``."""
        return self.signatures[name].format(f=STORAGE_TYPE[dtype], a=COMPUTE_DTYPE[dtype],
                                            i=label_dtype)

    def python_kernel(self, name, dtype):
        """The (uncompiled) Python function of kernel ``name`` for ``dtype``."""
        if dtype not in self._python:
            numba_cuda()
            self._python[dtype] = self._make(dtype)
        return self._python[dtype][name]

    def variants(self):
        """Every ``(name, dtype, label_dtype or None)`` a launcher may compile."""
        out = []
        for name, sig in self.signatures.items():
            for dtype in FLOAT_DTYPES + tuple(self.half_dtypes.get(name, ())):
                if "{i}" in sig:
                    out.extend((name, dtype, lab) for lab in LABEL_DTYPES)
                else:
                    out.append((name, dtype, None))
        return out

    def compiled(self, name, dtype, label_dtype=None):
        """Kernel ``name`` compiled for its explicit ``dtype`` signature (once, then cached)."""
        key = (name, dtype, label_dtype)
        kernel = self._compiled.get(key)
        if kernel is None:
            with self._lock:
                kernel = self._compiled.get(key)
                if kernel is None:
                    sig = self.signature(name, dtype, label_dtype or "int64")
                    kernel = numba_cuda().jit(sig)(self.python_kernel(name, dtype))
                    if simulator_enabled():
                        kernel = _SimulatorLaunch(kernel)
                    self._compiled[key] = kernel
        return kernel


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



_streams = {}


def is_cupy(a):
    return type(a).__module__.split(".")[0] == "cupy"


def stream_for(a):
    """CuPy's current stream (as a cached Numba external stream) for CuPy arrays, else 0."""
    if not is_cupy(a):
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


def dtype_of(a):
    return np.dtype(a.dtype).name


def kernel_dtype_of(a):
    """The kernel dtype name of ``a``: its dtype name, ``"bfloat16"`` for uint16 bits."""
    name = np.dtype(a.dtype).name
    return "bfloat16" if name == BFLOAT16_STORAGE else name


def check(name, arrays, dtype=None, allowed=FLOAT_DTYPES):
    """Check ``{label: (array, shape or None)}``: same float dtype, C-contiguous, same library.

    ``allowed`` lists the kernel dtype names accepted (uint16 arrays count as
    ``"bfloat16"`` bit patterns). Returns the common kernel dtype name.
    """
    first = None
    for label, (a, shape) in arrays.items():
        if first is None:
            first = a
            cupy_arrays = is_cupy(a)
            if not cupy_arrays and not isinstance(a, np.ndarray):
                raise TypeError(f"{name}: {label} must be a CuPy array (or a NumPy array "
                                f"under the CUDA simulator), got {type(a).__name__}")
            if not cupy_arrays and not simulator_enabled():
                raise TypeError(f"{name}: NumPy arrays run only under the CUDA simulator "
                                "(NUMBA_ENABLE_CUDASIM=1); on a GPU pass CuPy arrays")
            if dtype is None:
                dtype = kernel_dtype_of(a)
        elif is_cupy(a) != cupy_arrays or not (cupy_arrays or isinstance(a, np.ndarray)):
            raise TypeError(f"{name}: {label} is a {type(a).__module__} array but the other "
                            "arguments are not; all arrays must come from one library")
        if kernel_dtype_of(a) != dtype:
            raise TypeError(f"{name}: {label} has dtype {kernel_dtype_of(a)}, expected "
                            f"{dtype}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name}: {label} must be C-contiguous")
        if shape is not None and tuple(a.shape) != tuple(shape):
            raise ValueError(f"{name}: {label} has shape {tuple(a.shape)}, expected "
                             f"{tuple(shape)}")
    if dtype not in allowed:
        raise TypeError(f"{name}: dtype {dtype} has no kernel; expected one of {allowed}")
    return dtype


def require_array(name, label, a):
    """Raise TypeError unless ``a`` is a NumPy or CuPy array (before reading its shape)."""
    if not (isinstance(a, np.ndarray) or is_cupy(a)) or not hasattr(a, "shape"):
        raise TypeError(f"{name}: {label} must be a CuPy array (or a NumPy array under the "
                        f"CUDA simulator), got {type(a).__name__}")


def grid_1d(n):
    threads = max(1, min(config.block, n))
    blocks = max(1, min(-(-n // threads), config.max_blocks))
    return blocks, threads


SIMULATOR_SM_COUNT = 2
"""Multiprocessors assumed under the simulator (it has no device to ask; small keeps
simulated grids small)."""

_sm_count = None


def multiprocessor_count():
    """Multiprocessors (SMs) of the current device, read once and cached.

    ``SIMULATOR_SM_COUNT`` under the simulator. The first device asked is the one cached:
    a process driving several GPUs of one model (the usual case) gets the right count.
    """
    global _sm_count
    if _sm_count is None:
        if simulator_enabled():
            _sm_count = SIMULATOR_SM_COUNT
        else:
            _sm_count = int(numba_cuda().get_current_device().MULTIPROCESSOR_COUNT)
    return _sm_count


def grid_stride(n, threads=None):
    """``(blocks, threads)`` of a grid-stride launch over ``n`` work items.

    ``threads`` defaults to ``config.block`` (fewer for tiny ``n``). Blocks cover ``n``
    once if that takes fewer than ``config.blocks_per_sm`` blocks per multiprocessor (and
    ``config.max_blocks``); beyond that each thread loops, so a huge array launches one
    full wave sized to the device, not a grid capped at an arbitrary count.
    """
    if threads is None:
        threads = max(1, min(config.block, n))
    cap = max(1, min(config.max_blocks, multiprocessor_count() * config.blocks_per_sm))
    blocks = max(1, min(-(-n // threads), cap))
    return blocks, threads


SHFL_XOR = 3
"""The shuffle mode of a butterfly (``lane ^ index``) exchange, as PTX's ``shfl.sync.bfly``."""


def install_simulator_shuffle():
    """Give the simulator's ``cuda`` module a ``shfl_xor_sync`` (it has no shuffles).

    Kernels shuffle with ``cuda.shfl_xor_sync(mask, value, lane_mask)``, which numba-cuda
    compiles to ``shfl.sync.bfly`` (also through ``compile_ptx`` without a GPU). Under the
    simulator this adds a stand-in built on :func:`simulator_shfl_sync` to the module object
    the simulator substitutes for ``cuda`` inside kernels; elsewhere it does nothing.
    """
    if not simulator_enabled():
        return
    from numba.cuda.simulator.kernelapi import FakeCUDAModule

    if not hasattr(FakeCUDAModule, "shfl_xor_sync"):
        FakeCUDAModule.shfl_xor_sync = staticmethod(_simulator_shfl_xor_sync)


_warp_exchange_lock = threading.Lock()


def _simulator_shfl_xor_sync(mask, value, lane_mask):
    """Simulator stand-in for ``cuda.shfl_xor_sync`` (numba-cuda's simulator has none)."""
    return simulator_shfl_sync(mask, SHFL_XOR, value, lane_mask, 0x1F)[0]


def simulator_shfl_sync(mask, mode, value, index, clamp):
    """Simulator stand-in for ``cuda.shfl_sync_intrinsic``, xor mode only.

    Each simulated thread is a Python thread; the 32 lanes of a warp meet at a barrier,
    publish ``value`` and read lane ``lane ^ index``'s. As on the hardware every lane of
    the warp must call it; ``mask`` and ``clamp`` are ignored (kernels here always shuffle
    the full warp), and the block size must be a multiple of 32.
    """
    if mode != SHFL_XOR:
        raise NotImplementedError(f"simulator shuffle: mode {mode}, only xor ({SHFL_XOR})")
    me = threading.current_thread()
    warp, lane = divmod(me.thread_id, 32)
    with _warp_exchange_lock:
        warps = me._manager.__dict__.setdefault("_dualnn_warps", {})
        slot = warps.get(warp)
        if slot is None:
            slot = warps[warp] = ([None] * 32, threading.Barrier(32, timeout=120))
    values, barrier = slot
    values[lane] = value
    barrier.wait()
    out = values[lane ^ index]
    barrier.wait()
    return out, True


def flat(a):
    return a.reshape(-1)

