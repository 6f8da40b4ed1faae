"""dualnn: feed-forward neural networks on NumPy (CPU) or CuPy (GPU), one flag apart.

>>> import dualnn as dn
>>> model = dn.Sequential(dn.layers.Linear(4, 8), dn.layers.ReLU(), dn.layers.Linear(8, 3))
"""

from ._threads import apply_thread_policy_env as _apply_thread_policy_env

_apply_thread_policy_env()  # before NumPy loads OpenBLAS

from . import backend, errors, init, layers, losses, optim  # noqa: E402
from .device import (  # noqa: E402
    available_devices,
    get_backend,
    get_device,
    seed,
    set_device,
    use_backend,
    use_device,
)
from .gradcheck import gradcheck  # noqa: E402
from .layers import Layer, Sequential  # noqa: E402
from .parameter import Parameter  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "available_devices", "backend", "errors", "get_backend", "get_device", "gradcheck", "init",
    "Layer", "layers", "losses", "optim", "Parameter", "seed", "Sequential", "set_device",
    "use_backend", "use_device",
]

from . import callbacks, data, datasets, training  # noqa: E402, F401
from . import distributed  # noqa: E402, F401  (mpi4py loads only in distributed.init)
from .training import History, evaluate, fit, load, predict, save  # noqa: E402
__all__ += ["callbacks", "data", "datasets", "distributed", "evaluate", "fit", "History", "load",
            "predict", "save", "training"]

from .precision import LossScaler  # noqa: E402
from .memory import estimate_memory, summary  # noqa: E402
__all__ += ["estimate_memory", "LossScaler", "summary"]
from .export import export_onnx  # noqa: E402  (onnx itself is imported only when called)
__all__ += ["export_onnx"]

from ._threads import install as _install_thread_policy  # noqa: E402

_install_thread_policy()  # re-time an OpenBLAS loaded before dualnn; hook the kernels
