"""The thread policy that keeps Numba's threads and OpenBLAS's from fighting.

Measured on 2-core machines (see the docs' performance page): OpenBLAS's idle worker spins
about 100 ms after every GEMM, so a parallel Numba kernel inside a training step runs as a
serial one; ``OPENBLAS_THREAD_TIMEOUT=4`` stops the spin. Numba's OpenMP threading layer
with ``OMP_WAIT_POLICY=PASSIVE`` starts parallel work sooner than its workqueue layer.

Environment variables only work before the libraries load, so :func:`apply_thread_policy_env`
runs first thing in ``import dualnn`` and in the ``dualnn`` command, and only sets a
variable the user has not set. A program that imports NumPy before dualnn should export
``OPENBLAS_THREAD_TIMEOUT=4 OMP_WAIT_POLICY=PASSIVE`` itself.
"""

from __future__ import annotations

import os
import sys

POLICY = {
    "OPENBLAS_THREAD_TIMEOUT": "4",
    "OMP_WAIT_POLICY": "PASSIVE",
}

_applied = {}


def apply_thread_policy_env():
    """Set the policy's environment variables the user left unset, where it still matters.

    Returns the mapping of variables this call set.
    """
    set_now = {}
    blas_loaded = "numpy" in sys.modules
    for name, value in POLICY.items():
        if name in os.environ:
            continue
        if name == "OPENBLAS_THREAD_TIMEOUT" and blas_loaded:
            continue  # too late: OpenBLAS read its environment when NumPy loaded
        os.environ[name] = value
        set_now[name] = value
    _applied.update(set_now)
    return set_now


def configure_numba_threading():
    """Prefer Numba's OpenMP layer, then TBB, then workqueue (call before the first prange)."""
    import numba

    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]


def thread_policy_report():
    """What is in force: the policy's variables, who set them, Numba's threading layer."""
    report = {}
    for name in POLICY:
        value = os.environ.get(name)
        origin = "dualnn" if name in _applied else ("user" if value is not None else "unset")
        report[name] = f"{value} ({origin})" if value is not None else "unset"
    try:
        import numba

        configure_numba_threading()
        try:
            report["numba_threading_layer"] = numba.threading_layer()
        except ValueError:
            report["numba_threading_layer"] = "not started yet (priority: " + ", ".join(
                numba.config.THREADING_LAYER_PRIORITY) + ")"
        report["numba_threads"] = str(numba.get_num_threads())
    except ImportError:
        report["numba_threading_layer"] = "numba not installed"
    return report
