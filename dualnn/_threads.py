"""The thread policy that keeps Numba's threads and OpenBLAS's from fighting, whatever
was imported before dualnn.

Two spinning pools steal the core a 2-core training step needs (timings in the docs'
performance page, "Threads, whatever was imported first"):

- OpenBLAS's idle workers spin ~100 ms after every GEMM unless ``OPENBLAS_THREAD_TIMEOUT``
  was set when OpenBLAS loaded;
- libgomp's idle workers spin after every parallel region unless ``OMP_WAIT_POLICY=PASSIVE``
  was set when libgomp loaded; Numba's ``omp`` threading layer shares the ``libgomp.so.1``
  PyTorch already loaded.

The policy works in three steps, none relying on a variable being read in time:

1. :func:`apply_thread_policy_env` (first thing in ``import dualnn`` and the ``dualnn``
   command, standard library only) records what is already loaded and sets the two
   variables the user left unset, for every library that loads later.
2. :func:`install` (end of ``import dualnn``) asks each loaded OpenBLAS which timeout it
   read (``openblas_thread_timeout()``); one that read none re-reads its environment and
   restarts its threads (``openblas_read_env`` + ``blas_thread_shutdown_``), so its workers
   sleep after each GEMM. It also registers :func:`numba_policy` with the kernels.
3. :func:`numba_policy` runs when the first fused kernel is built, before Numba's threading
   layer starts: it picks the layer (``omp`` unless a spinning libgomp is already up, then
   ``tbb`` or ``workqueue``) and whether kernels may run their parallel builds (not while an
   OpenBLAS that could not be re-timed spins).

:func:`thread_policy_report` says what is in force (for ``dualnn info`` and the tests).
"""

from __future__ import annotations

import os
import sys

POLICY = {
    "OPENBLAS_THREAD_TIMEOUT": "4",
    "OMP_WAIT_POLICY": "PASSIVE",
}
TIMEOUT_EXPORT = "export OPENBLAS_THREAD_TIMEOUT=4 OMP_WAIT_POLICY=PASSIVE before Python starts"

_applied = {}
"""Variables :func:`apply_thread_policy_env` set (name -> value)."""
_at_import = {}
"""What was loaded, and the variables' values, when dualnn was first imported."""
_state = {"openblas": {}, "numba": None, "installed": False}


FORCE_VARIABLE = "DUALNN_THREAD_POLICY"
"""Overrides for measuring alternatives (``dualnn bench --import-orders --alternatives``):
comma-separated ``retime=0`` (leave spinning OpenBLAS pools alone), ``parallel=0|1``,
``layer=omp|tbb|workqueue`` (first in Numba's priority), ``blas_threads=N``
(threadpoolctl limit on the BLAS pools), ``mkl_layer=sequential|gnu|intel|tbb`` (oneMKL's
threading layer)."""

MKL_LAYERS = ("sequential", "gnu", "intel", "tbb")
MKL_LAYER_DEFAULT = "gnu"
"""oneMKL threading layer used unless Numba runs on TBB or it is overridden (see
:func:`mkl_policy`)."""


def forced():
    """The overrides of :data:`FORCE_VARIABLE` as a dict (empty when unset)."""
    text = os.environ.get(FORCE_VARIABLE, "")
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        if key in ("retime", "parallel", "blas_threads"):
            out[key] = int(value)
        elif (key == "layer" and value in ("omp", "tbb", "workqueue")) \
                or (key == "mkl_layer" and value in MKL_LAYERS):
            out[key] = value
        else:
            from .errors import ConfigurationError

            raise ConfigurationError(f"{FORCE_VARIABLE}: unknown item {item!r} (expected "
                                     "retime=0|1, parallel=0|1, layer=omp|tbb|workqueue, "
                                     "blas_threads=N, mkl_layer=" + "|".join(MKL_LAYERS) + ")")
    return out


# ------------------------------------------------------------------------- detection

def _initial_environ():
    """The environment the process started with (``/proc/self/environ``), or ``{}``."""
    try:
        with open("/proc/self/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep:
            env[name.decode(errors="replace")] = value.decode(errors="replace")
    return env


def _loaded_library(soname):
    """A ctypes handle on ``soname`` if the process already loaded it, else ``None``."""
    if not hasattr(os, "RTLD_NOLOAD"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(soname, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return None


def _gomp_spins(env):
    """Whether a libgomp that read ``env`` spins after parallel regions."""
    return env.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE" \
        and env.get("GOMP_SPINCOUNT", "") != "0"


def apply_thread_policy_env():
    """Record what is loaded and set the policy's variables the user left unset.

    Imports only the standard library (it runs before NumPy loads). The first call
    records the situation (NumPy imported? ``libgomp.so.1`` loaded, and with which wait
    policy?); later calls only set variables still unset.

    Returns
    -------
    dict
        The variables this call set (name -> value).
    """
    if not _at_import:
        env = {name: os.environ.get(name)
               for name in (*POLICY, "GOMP_SPINCOUNT", "NUMBA_THREADING_LAYER")}
        gomp = _loaded_library("libgomp.so.1") is not None
        _at_import.update(
            numpy="numpy" in sys.modules, torch="torch" in sys.modules,
            sklearn="sklearn" in sys.modules, gomp=gomp, env=env,
            gomp_spins=gomp and _gomp_spins({k: v for k, v in env.items() if v is not None}))
    set_now = {}
    for name, value in POLICY.items():
        if name not in os.environ:
            os.environ[name] = value  # read by libraries that load later, and by step 2
            set_now[name] = value
    _applied.update(set_now)
    return set_now


def _openblas_paths():
    """Files of the OpenBLAS libraries loaded in this process."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        return [lib["filepath"] for lib in threadpool_info()
                if lib.get("internal_api") == "openblas"]
    paths = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                if "openblas" in os.path.basename(path) and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    return paths


def _openblas_threads(lib):
    for name in ("openblas_get_num_threads", "openblas_get_num_threads64_",
                 "scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads"):
        if hasattr(lib, name):
            return int(getattr(lib, name)())
    return None


def check_openblas(retime=True):
    """Ask each loaded OpenBLAS which thread timeout it uses; re-time those that spin.

    Parameters
    ----------
    retime : bool
        Re-read the environment and restart the threads of an OpenBLAS that read no
        ``OPENBLAS_THREAD_TIMEOUT`` when it loaded (its workers then sleep after a GEMM).
        Restarting joins the idle workers, so it must not race a GEMM in another thread:
        dualnn does it only in ``import dualnn`` (:func:`install`).

    Returns
    -------
    dict
        filepath -> {"timeout": exponent read (0 = none), "spins": bool,
        "retimed": bool, "threads": int or None, "note": str}.
    """
    wanted = int(os.environ.get("OPENBLAS_THREAD_TIMEOUT") or POLICY["OPENBLAS_THREAD_TIMEOUT"])
    for path in _openblas_paths():
        known = _state["openblas"].get(path)
        if known is not None and not (known["spins"] and retime):
            continue
        entry = {"timeout": None, "spins": None, "retimed": False, "threads": None, "note": ""}
        lib = _loaded_library(path)
        if lib is None or not hasattr(lib, "openblas_thread_timeout"):
            entry["note"] = "cannot ask it its thread timeout"
        else:
            entry["timeout"] = int(lib.openblas_thread_timeout())
            entry["spins"] = entry["timeout"] == 0
            if entry["spins"] and retime and hasattr(lib, "openblas_read_env") \
                    and hasattr(lib, "blas_thread_shutdown_"):
                lib.openblas_read_env()  # reads the OPENBLAS_THREAD_TIMEOUT set above
                if int(lib.openblas_thread_timeout()) == wanted:
                    lib.blas_thread_shutdown_()  # threads restart, timed, at the next GEMM
                    entry.update(timeout=wanted, spins=False, retimed=True,
                                 note="loaded before dualnn without a timeout: re-timed")
            elif entry["spins"]:
                entry["note"] = "its workers spin after each GEMM"
            entry["threads"] = _openblas_threads(lib)
        _state["openblas"][path] = entry
    return _state["openblas"]


# ------------------------------------------------------------------------- decisions

def _tbb_available():
    """Whether Numba's TBB layer can load. The ``tbb`` wheel puts ``libtbb.so.12`` in the
    environment's ``lib/``, off the linker's path, so it is loaded by path first."""
    import importlib.util

    if importlib.util.find_spec("numba") is None:
        return False
    from . import _libs

    _libs.load_global(("libtbb.so.12",))
    try:
        import numba.np.ufunc.tbbpool  # noqa: F401
    except ImportError:
        return False
    return True


def choose(situation):
    """The policy for a situation (pure: the tests check it directly).

    Parameters
    ----------
    situation : dict
        ``gomp_spins`` (a spinning ``libgomp.so.1`` is already up), ``openblas_spins``
        (an OpenBLAS still spins after GEMMs), ``user_layer`` (``NUMBA_THREADING_LAYER``
        or ``None``), ``tbb`` (Numba's TBB layer importable).

    Returns
    -------
    dict
        ``layers``: Numba threading-layer priority (``None``: the user's choice);
        ``parallel``: whether kernels may run their parallel builds; ``why``: a sentence.
    """
    if situation.get("openblas_spins"):
        return {"layers": None if situation.get("user_layer") else ["omp", "tbb", "workqueue"],
                "parallel": False,
                "why": "an OpenBLAS spins after each GEMM and could not be re-timed: "
                       "serial fused kernels (a parallel one would run serially anyway)"}
    if situation.get("user_layer"):
        return {"layers": None, "parallel": True,
                "why": f"NUMBA_THREADING_LAYER={situation['user_layer']} set by the user"}
    if situation.get("gomp_spins"):
        layers = ["tbb", "workqueue", "omp"] if situation.get("tbb") \
            else ["workqueue", "tbb", "omp"]  # Numba wants a permutation of all three
        return {"layers": layers, "parallel": True,
                "why": "libgomp was up before dualnn with an active wait policy: Numba's "
                       f"omp layer would share it and spin, so {layers[0]}"}
    return {"layers": ["omp", "tbb", "workqueue"], "parallel": True,
            "why": "no spinning pool: Numba's omp layer with a passive wait policy"}


def situation():
    """The facts :func:`choose` decides on, detected now."""
    pools = check_openblas(retime=False)  # re-timing restarts threads: only at import
    gomp_now = _loaded_library("libgomp.so.1") is not None
    gomp_spins = _at_import.get("gomp_spins", False) if _at_import.get("gomp") else (
        gomp_now and _gomp_spins({k: v for k, v in os.environ.items()}))
    return {
        "gomp_spins": bool(gomp_spins),
        "gomp_loaded_before_dualnn": bool(_at_import.get("gomp")),
        "openblas_spins": any(p["spins"] for p in pools.values()),
        "user_layer": os.environ.get("NUMBA_THREADING_LAYER") or None,
        "tbb": _tbb_available(),
    }


def numba_policy(numba):
    """Configure ``numba`` before its threading layer starts; returns the decision.

    Called once by the kernels (``kernels._numba``) before the first fused kernel is
    built. Returns the dict of :func:`choose` plus ``situation`` and ``started_before``
    (the layer was already running: Numba was used before, the choice cannot apply).
    """
    facts = situation()
    decision = dict(choose(facts), situation=facts, started_before=_layer_started(numba))
    force = forced()
    if "parallel" in force:
        decision["parallel"] = bool(force["parallel"])
    if "layer" in force:
        decision["layers"] = [force["layer"]] + [name for name in ("omp", "tbb", "workqueue")
                                                 if name != force["layer"]]
    if force:
        decision["why"] = f"forced by {FORCE_VARIABLE}={os.environ[FORCE_VARIABLE]}"
    if decision["layers"] is not None:
        numba.config.THREADING_LAYER_PRIORITY = list(decision["layers"])
    _state["numba"] = decision
    return decision


def _layer_started(numba):
    try:
        numba.threading_layer()
    except ValueError:
        return False
    return True


def install():
    """Step 2 of the policy: re-time spinning OpenBLAS pools, register :func:`numba_policy`."""
    if _state["installed"]:
        return
    from .kernels import _numba as numba_kernels

    force = forced()
    check_openblas(retime=bool(force.get("retime", 1)))
    if "blas_threads" in force:
        from threadpoolctl import threadpool_limits

        threadpool_limits(force["blas_threads"], user_api="blas")
    numba_kernels.set_policy_hook(numba_policy)
    _state["installed"] = True


def configure_numba_threading():
    """Apply the policy to Numba now (call before the first ``prange``); returns it."""
    if _state["numba"] is None:
        from .kernels import _numba as numba_kernels

        numba_kernels.numba_module()
    return _state["numba"]


def _cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _numba_layer_for_mkl():
    """The Numba threading layer that runs (or will run) the fused kernels, or ``None``
    when kernels run serially or Numba is absent."""
    try:
        decision = configure_numba_threading()
        import numba
    except ImportError:
        return None
    if not decision["parallel"]:
        return None
    try:
        return numba.threading_layer()  # already running
    except ValueError:
        pass
    user = os.environ.get("NUMBA_THREADING_LAYER", "").strip().lower()
    if user in ("omp", "tbb", "workqueue"):
        return user
    return (decision["layers"] or numba.config.THREADING_LAYER_PRIORITY)[0]


def mkl_policy():
    """oneMKL's threading layer and thread count (read when oneMKL loads).

    The thread count is the one the rest of dualnn uses (the first loaded OpenBLAS's, else
    the usable cores); ``MKL_NUM_THREADS`` you set is respected. The layer is the runtime
    of Numba's threading layer, so the GEMMs and the fused kernels between them share one
    pool: ``tbb`` when Numba runs on TBB, else ``gnu`` (libgomp, which Numba's ``omp`` layer
    uses). ``MKL_THREADING_LAYER`` or ``DUALNN_THREAD_POLICY=mkl_layer=...`` override it.
    Chosen by measurement (the performance page, "oneMKL's GEMMs").

    Returns
    -------
    dict
        ``layer`` (one of :data:`MKL_LAYERS`), ``threads`` (int), ``why`` (a sentence).
    """
    threads = [e["threads"] for e in _state["openblas"].values() if e.get("threads")]
    count = threads[0] if threads else _cpu_count()
    why = "dualnn's thread count"
    if os.environ.get("MKL_NUM_THREADS", "").strip().isdigit():
        count, why = int(os.environ["MKL_NUM_THREADS"]), "MKL_NUM_THREADS set by the user"
    user = os.environ.get("MKL_THREADING_LAYER", "").strip().lower()
    force = forced()
    if "mkl_layer" in force:
        layer, why = force["mkl_layer"], f"forced by {FORCE_VARIABLE}"
    elif user in MKL_LAYERS:
        layer, why = user, why + ", MKL_THREADING_LAYER set by the user"
    elif _numba_layer_for_mkl() == "tbb":
        layer, why = "tbb", why + ", tbb layer: the pool Numba's kernels run on"
    else:
        layer, why = MKL_LAYER_DEFAULT, why + ", gnu layer: libgomp, as Numba's omp layer"
    return {"layer": layer, "threads": max(1, int(count)), "why": why}


# ------------------------------------------------------------------------- report

def policy_state(start=True):
    """The policy in force, as data (what ``dualnn info`` prints and the tests check).

    Parameters
    ----------
    start : bool
        Start Numba's threading layer (run a tiny parallel kernel) so the layer actually
        used is known; otherwise report it as not started.

    Returns
    -------
    dict
        ``imported_before``: libraries imported before dualnn; ``openblas``: per loaded
        OpenBLAS its timeout, whether it spins, was re-timed, its thread count;
        ``gomp``: whether ``libgomp.so.1`` was up before dualnn and spins; ``numba_layer``:
        the threading layer actually running (or ``None``); ``numba_threads``;
        ``parallel_kernels``; ``why``; ``warnings``: sentences, empty when the policy holds.
    """
    install()
    decision = configure_numba_threading()
    import numba

    layer = None
    if start and decision["parallel"]:
        from .kernels import _numba as numba_kernels

        numba_kernels.start_threading_layer()
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = None
    facts = decision["situation"]
    warnings = []
    if any(p["spins"] for p in _state["openblas"].values()):
        warnings.append("an OpenBLAS loaded before dualnn spins after each GEMM and could "
                        f"not be re-timed (fused kernels run serially): {TIMEOUT_EXPORT}")
    if facts["gomp_spins"] and layer == "omp":
        warnings.append("Numba's omp layer shares a libgomp that spins (it was set before "
                        f"dualnn): {TIMEOUT_EXPORT}, or NUMBA_THREADING_LAYER=workqueue")
    if decision["started_before"] and decision["layers"] and layer not in decision["layers"][:1]:
        warnings.append(f"Numba's threading layer ({layer}) started before dualnn chose one")
    imported = [name for name in ("numpy", "torch", "sklearn") if _at_import.get(name)]
    return {
        "imported_before": imported,
        "openblas": {path: dict(entry) for path, entry in _state["openblas"].items()},
        "gomp": {"loaded_before_dualnn": facts["gomp_loaded_before_dualnn"],
                 "spins": facts["gomp_spins"]},
        "numba_layer": layer,
        "numba_layer_priority": list(numba.config.THREADING_LAYER_PRIORITY),
        "numba_threads": int(numba.get_num_threads()),
        "parallel_kernels": bool(decision["parallel"]),
        "why": decision["why"],
        "warnings": warnings,
    }


def thread_policy_report(start=True):
    """:func:`policy_state` as printable lines: an ordered dict of label -> text."""
    state = policy_state(start=start)
    report = {"imported before dualnn": ", ".join(state["imported_before"]) or "nothing"}
    for path, entry in state["openblas"].items():
        if entry["timeout"] is None:
            text = entry["note"]
        else:
            timeout = entry["timeout"] or "none (spins ~100 ms after each GEMM)"
            text = (f"{entry['threads']} threads, timeout {timeout}"
                    + (", re-timed at run time" if entry["retimed"] else ""))
        report[f"openblas {os.path.basename(path)}"] = text
    gomp = state["gomp"]
    report["libgomp before dualnn"] = (
        ("yes, spinning wait policy" if gomp["spins"] else "yes, passive")
        if gomp["loaded_before_dualnn"] else "no")
    report["numba threading layer"] = state["numba_layer"] or (
        "not started (priority: " + ", ".join(state["numba_layer_priority"]) + ")")
    report["numba threads"] = str(state["numba_threads"])
    report["fused kernels"] = "parallel builds allowed" if state["parallel_kernels"] \
        else "serial only"
    report["why"] = state["why"]
    for i, text in enumerate(state["warnings"]):
        report[f"WARNING {i + 1}"] = text
    return report
