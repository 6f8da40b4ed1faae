"""One device flag: the process-wide default, a scoped override, and the backend registry.

The device in force is, in order: the innermost ``use_device``/``use_backend`` of the
current context; else the process default set by :func:`set_device`; else the
``DUALNN_DEVICE`` environment variable (read at first use); else ``"cpu"``.

``use_device`` is a :class:`contextvars.ContextVar`, so it nests, restores on exit and
does not leak into threads started inside it: such threads see the process default.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading

from .errors import ConfigurationError, DeviceMismatchError, DeviceUnavailableError

_override = contextvars.ContextVar("dualnn_backend_override", default=None)
_lock = threading.RLock()
_default_device = None  # canonical device string once set or read from the environment
_backends = {}  # canonical device string -> Backend

ENV_DEVICE = "DUALNN_DEVICE"


def _gpu_count():
    """Number of usable CUDA devices; raises DeviceUnavailableError saying why there is none."""
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        raise DeviceUnavailableError(
            "no GPU: CuPy is not installed or failed to import "
            f"({type(exc).__name__}: {exc}). Install the GPU extra: "
            "pip install 'dualnn[gpu]' (cupy-cuda12x and numba-cuda[cu12]), on a machine "
            "with an NVIDIA GPU and driver") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise DeviceUnavailableError(
            "no GPU: CuPy is installed but the CUDA driver is missing or too old "
            f"({type(exc).__name__}: {exc}). Install an NVIDIA driver that supports "
            "CUDA 12, or use the CPU: dn.set_device('cpu')") from None
    if count < 1:
        raise DeviceUnavailableError(
            "no GPU: the CUDA driver is present but reports no device. Check "
            "CUDA_VISIBLE_DEVICES and nvidia-smi, or use the CPU: dn.set_device('cpu')")
    return count


def available_devices():
    """Devices usable here, ``"cpu"`` first: ``["cpu"]`` or ``["cpu", "gpu:0", ...]``."""
    try:
        count = _gpu_count()
    except DeviceUnavailableError:
        count = 0
    return ["cpu"] + [f"gpu:{i}" for i in range(count)]


def canonical_device(device):
    """Normalize a device spelling and check it is usable.

    ``"cpu"``, ``"gpu"`` (= ``"gpu:0"``), ``"gpu:N"``, ``"cuda"``/``"cuda:N"`` (aliases)
    and ``"auto"`` (first usable GPU, else ``"cpu"``).

    Raises
    ------
    ConfigurationError
        For a spelling dualnn does not know.
    DeviceUnavailableError
        For a GPU that is not usable here, saying what is missing.
    """
    if not isinstance(device, str):
        raise ConfigurationError(f"device must be a string such as 'cpu' or 'gpu', got {device!r}")
    spec = device.strip().lower()
    if spec == "cpu":
        return "cpu"
    if spec == "auto":
        devices = available_devices()
        return devices[1] if len(devices) > 1 else "cpu"
    kind, _, index = spec.partition(":")
    if kind not in ("gpu", "cuda") or (index and not index.isdigit()):
        raise ConfigurationError(
            f"unknown device {device!r}; expected 'cpu', 'gpu', 'gpu:N' or 'auto'")
    index = int(index) if index else 0
    count = _gpu_count()
    if index >= count:
        raise DeviceUnavailableError(
            f"no device gpu:{index}: this machine has {count} GPU(s) (gpu:0..gpu:{count - 1})")
    return f"gpu:{index}"


def _make_backend(device):
    if device == "cpu":
        from .backend.numpy_backend import NumpyBackend
        backend = NumpyBackend()
    else:
        from .backend.cupy_backend import CupyBackend
        backend = CupyBackend(int(device.split(":")[1]))
    return backend


def backend_for(device):
    """The (cached) backend of a device string; ``"gpu"`` etc. are normalized first."""
    device = canonical_device(device)
    with _lock:
        backend = _backends.get(device)
        if backend is None:
            backend = _backends[device] = _make_backend(device)
        return backend


def _process_default():
    global _default_device
    with _lock:
        if _default_device is None:
            env = os.environ.get(ENV_DEVICE, "").strip()
            try:
                _default_device = canonical_device(env) if env else "cpu"
            except (ConfigurationError, DeviceUnavailableError) as exc:
                raise type(exc)(f"environment variable {ENV_DEVICE}={env!r}: {exc}") from None
        return _default_device


def set_device(device):
    """Set the process-wide default device (``"cpu"``, ``"gpu"``, ``"gpu:1"``, ``"auto"``).

    Raises :class:`~dualnn.errors.DeviceUnavailableError` at once when the device is
    not usable here. Returns the canonical device string.
    """
    global _default_device
    device = canonical_device(device)
    backend_for(device)
    with _lock:
        _default_device = device
    return device


def get_device():
    """The canonical device string in force in this context."""
    return get_backend().device


def get_backend():
    """The :class:`~dualnn.backend.ArrayAPIBackend` in force in this context."""
    override = _override.get()
    if override is not None:
        return override
    return backend_for(_process_default())


def backend_of(array, who="dualnn"):
    """The backend an array belongs to: the one in force if it owns the array, else the
    CPU backend for a NumPy array or the GPU backend of a CuPy array's device.

    Raises
    ------
    DeviceMismatchError
        For anything else (a list, an array of another library).
    """
    current = get_backend()
    if current.owns(array):
        return current
    module = type(array).__module__.split(".")[0]
    if module == "numpy" and hasattr(array, "shape"):
        return backend_for("cpu")
    if module == "cupy":
        return backend_for(f"gpu:{array.device.id}")
    from .backend.base import describe_array
    raise DeviceMismatchError(
        f"{who}: expected an array of the model's device ({current.device}, {current.name}), "
        f"got {describe_array(array)}")


@contextlib.contextmanager
def use_backend(backend):
    """Scope any backend instance (e.g. ``ArrayAPIBackend(array_api_strict)``)."""
    token = _override.set(backend)
    try:
        yield backend
    finally:
        _override.reset(token)


@contextlib.contextmanager
def use_device(device):
    """Scoped device override; nests and restores. Raises at once if unusable."""
    with use_backend(backend_for(device)) as backend:
        yield backend


def seed(value):
    """Seed the generator of every backend, present and future.

    Drives weight initialization, dropout masks and ``fit``'s shuffling; CPU runs with
    the same seed are reproducible.
    """
    from .backend.base import seed_all
    seed_all(int(value))


def _reset_for_tests():
    """Forget the process default and the cached backends (tests only)."""
    global _default_device
    with _lock:
        _default_device = None
        _backends.clear()
