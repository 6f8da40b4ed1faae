"""The double's ``cupy.cuda``: one always-available device, streams with pointer 0.

Every stream reports ``ptr == 0`` (CuPy's null stream): dualnn's launchers then run Numba
kernels on the default stream, which is all Numba's simulator supports
(``cuda.external_stream`` raises under it). Waiting for the device (``synchronize`` of a
device, stream or event, ``get_elapsed_time``) counts as a host sync.
"""

from __future__ import annotations

import contextlib
import time
import types

from . import counters, fake_ndarray

DEVICE_COUNT = [1]
"""How many GPUs the double reports (tests may set ``DEVICE_COUNT[0]``)."""


class CUDARuntimeError(RuntimeError):
    """As ``cupy.cuda.runtime.CUDARuntimeError``."""


class Device:
    """``cupy.cuda.Device(id)``: a context manager selecting device ``id``."""

    _current = [0]  # noqa: RUF012 - the process-wide current device, shared on purpose

    def __init__(self, device=None):
        self.id = self._current[0] if device is None else int(device)
        if not 0 <= self.id < DEVICE_COUNT[0]:
            raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")
        self._previous = []

    compute_capability = property(lambda self: "80")
    mem_info = property(lambda self: (8 << 30, 16 << 30))

    def use(self):
        self._current[0] = self.id

    def __enter__(self):
        self._previous.append(self._current[0])
        self._current[0] = self.id
        return self

    def __exit__(self, *exc):
        self._current[0] = self._previous.pop()

    def synchronize(self):
        counters.record("sync")

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(("cuda", self.id))

    def __repr__(self):
        return f"<CUDA Device {self.id}>"


class MemoryPointer:
    """``ndarray.data``: the address of the array's first element."""

    def __init__(self, ptr):
        self.ptr = ptr
        self.device_id = 0


class Stream:
    """``cupy.cuda.Stream``; ``ptr`` is always 0 (see the module docstring)."""

    _stack = []  # noqa: RUF012 - the current-stream stack, shared on purpose

    def __init__(self, null=False, non_blocking=False, ptr=0, priority=None):
        self.ptr = 0
        self.null = bool(null)
        self.device_id = 0

    @property
    def done(self):
        return True

    def synchronize(self):
        counters.record("sync")

    def use(self):
        Stream._stack[:] = [self]
        return self

    def record(self, event=None):
        event = Event() if event is None else event
        event.record(self)
        return event

    def wait_event(self, event):
        """Device-side wait: no host sync."""

    def __enter__(self):
        Stream._stack.append(self)
        return self

    def __exit__(self, *exc):
        Stream._stack.pop()


Stream.null = Stream(null=True)


class ExternalStream(Stream):
    def __init__(self, ptr, device_id=-1):
        super().__init__()


def get_current_stream(device_id=-1):
    return Stream._stack[-1] if Stream._stack else Stream.null


class Event:
    """``cupy.cuda.Event``; timing uses the host clock."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self._time = None

    def record(self, stream=None):
        self._time = time.perf_counter()

    @property
    def done(self):
        return True

    def query(self):
        return True

    def synchronize(self):
        counters.record("sync")


def get_elapsed_time(start_event, end_event):
    """Milliseconds between two recorded events; waits for ``end_event`` (a sync)."""
    counters.record("sync")
    return (end_event._time - start_event._time) * 1e3


class MemoryPool:
    """``cupy.cuda.MemoryPool``: bytes of live double arrays (used) and of the freed
    blocks the pool keeps (total - used), which serve later requests of their size."""

    def __init__(self, allocator=None):
        self._limit = 0

    def used_bytes(self):
        return fake_ndarray.memory_in_use()[0]

    def free_bytes(self):
        return fake_ndarray.memory_in_use()[1]

    def total_bytes(self):
        used, cached = fake_ndarray.memory_in_use()
        return used + cached

    def free_all_blocks(self, stream=None):
        fake_ndarray.free_cached()

    def n_free_blocks(self):
        return fake_ndarray.free_block_count()

    def set_limit(self, size=None, fraction=None):
        self._limit = int(size or 0)

    def get_limit(self):
        return self._limit

    def malloc(self, size):
        return MemoryPointer(0)


class PinnedMemoryPointer(bytearray):
    """Page-locked host memory (a bytearray: ``np.frombuffer`` views it)."""

    @property
    def ptr(self):
        return id(self)

    @property
    def size(self):
        return len(self)


class PinnedMemoryPool:
    def __init__(self, allocator=None):
        self._blocks = 0

    def malloc(self, size):
        return PinnedMemoryPointer(size)

    def n_free_blocks(self):
        return fake_ndarray.free_block_count()

    def free_all_blocks(self):
        """Nothing is cached."""

    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0


_default_pool = MemoryPool()
_default_pinned_pool = PinnedMemoryPool()


def get_default_memory_pool():
    return _default_pool


def get_default_pinned_memory_pool():
    return _default_pinned_pool


def alloc_pinned_memory(size):
    return PinnedMemoryPointer(int(size))


def set_allocator(allocator=None):
    """Accepted and ignored."""


def set_pinned_memory_allocator(allocator=None):
    """Accepted and ignored."""


@contextlib.contextmanager
def using_allocator(allocator=None):
    yield


def is_available():
    return DEVICE_COUNT[0] > 0


def get_device_id():
    return Device._current[0]


def _runtime_module():
    rt = types.ModuleType("cupy.cuda.runtime")
    rt.CUDARuntimeError = CUDARuntimeError
    rt.is_hip = False
    rt.getDeviceCount = lambda: DEVICE_COUNT[0]
    rt.getDevice = lambda: Device._current[0]
    rt.setDevice = lambda i: Device(i).use()
    rt.runtimeGetVersion = lambda: 12080
    rt.driverGetVersion = lambda: 12080
    rt.memGetInfo = lambda: (8 << 30, 16 << 30)

    def device_synchronize():
        counters.record("sync")

    rt.deviceSynchronize = device_synchronize

    def get_device_properties(device):
        Device(device)
        return {"name": b"CuPy double (NumPy)", "totalGlobalMem": 16 << 30, "major": 8,
                "minor": 0, "multiProcessorCount": 1, "warpSize": 32,
                "maxThreadsPerBlock": 1024, "l2CacheSize": 1 << 20}

    rt.getDeviceProperties = get_device_properties
    return rt


def build_module():
    """A fresh ``cupy.cuda`` module object of the double."""
    mod = types.ModuleType("cupy.cuda", __doc__)
    for name in ("Device", "MemoryPointer", "Stream", "ExternalStream", "Event",
                 "MemoryPool", "PinnedMemoryPointer", "PinnedMemoryPool", "get_current_stream",
                 "get_elapsed_time", "get_default_memory_pool", "get_default_pinned_memory_pool",
                 "alloc_pinned_memory", "set_allocator", "set_pinned_memory_allocator",
                 "using_allocator", "is_available", "get_device_id"):
        setattr(mod, name, globals()[name])
    mod.runtime = _runtime_module()
    mod.memory = mod
    mod.pinned_memory = mod
    mod.stream = mod
    mod.device = mod
    return mod
