"""dualnn: feed-forward neural networks on NumPy (CPU) or CuPy (GPU), one flag apart."""

from ._threads import apply_thread_policy_env as _apply_thread_policy_env

_apply_thread_policy_env()

from . import backend, errors  # noqa: E402
from .device import (  # noqa: E402
    available_devices,
    get_backend,
    get_device,
    seed,
    set_device,
    use_backend,
    use_device,
)

__version__ = "0.1.0"
