"""The thread policy holds in every import order (dualnn/_threads.py).

Each order runs in a fresh process: a short digits fit and a kernel-heavy MLP step, then
the policy in force (:func:`dualnn._threads.policy_state`), which kernel builds ran, the
Numba threading layer actually running and how much CPU OpenBLAS's idle workers burnt
after GEMMs. Nothing here asserts a timing.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from dualnn import _threads
from dualnn.errors import ConfigurationError

SCRIPT = r"""
import importlib, json, os, sys, time
for name in sys.argv[1].split(",") if sys.argv[1] else []:
    importlib.import_module(name)
import dualnn as dn
import numpy as np
from dualnn import _threads
from dualnn.cli import build_model

data = dn.datasets.load("digits", None, seed=0)
dn.seed(0)
model = build_model(data.n_features, data.n_classes, [128, 128])
dn.fit(model, dn.losses.SoftmaxCrossEntropy(), dn.optim.Adam(model.parameters()),
       data.X_train, data.y_train, epochs=1, batch_size=64, progress=False)

# a kernel-heavy step: (512, 1024) float32 batch norm + ReLU and Adam pass the thresholds
# of the parallel builds
L = dn.layers
step_model = dn.Sequential(L.Linear(64, 1024, bias=False), L.BatchNorm(1024), L.ReLU(),
                           L.Linear(1024, 10))
opt = dn.optim.Adam(step_model.parameters())
loss_fn = dn.losses.SoftmaxCrossEntropy()
rng = np.random.default_rng(0)
x = rng.standard_normal((512, 64)).astype(np.float32)
y = rng.integers(0, 10, 512)
for _ in range(2):
    loss_fn.forward(step_model.forward(x, training=True), y)
    step_model.backward(loss_fn.backward(), input_grad=False)
    opt.step()
    opt.zero_grad()

import numba
from dualnn.kernels.activation import cpu as act
from dualnn.kernels.batchnorm import cpu as bn
from dualnn.kernels.optim import cpu as opt_k
built = {}
for module in (act, bn, opt_k):
    for name, (serial, parallel) in module._KERNELS._built.items():
        built[name] = [len(serial.signatures), len(parallel.signatures)]

def others_cpu():
    import ctypes
    me = ctypes.CDLL(None).syscall(186)  # gettid
    total = 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) != me:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")

a = rng.standard_normal((512, 512)).astype(np.float32)
idle_cpu = 0.0
for _ in range(3):
    a @ a
    time.sleep(0.02)  # the GEMM's workers finish their share
    before = others_cpu()
    time.sleep(0.2)
    idle_cpu += others_cpu() - before
from dualnn.backend import mkl, mkl_gemm
mkl_state, mkl_idle = None, 0.0
if mkl._state["checked"] and mkl_gemm.availability()[0]:  # the step's GEMMs loaded it
    mkl_state = mkl.info()
    b = rng.standard_normal((512, 1024)).astype(np.float32)
    for _ in range(3):
        mkl_gemm.gemm(b, b.T)
        time.sleep(0.02)
        before = others_cpu()
        time.sleep(0.2)
        mkl_idle += others_cpu() - before
state = _threads.policy_state(start=False)
print(json.dumps({"state": state, "layer": numba.threading_layer(), "built": built,
                  "idle_cpu": idle_cpu, "mkl": mkl_state, "mkl_idle_cpu": mkl_idle}))
"""


def run_order(imports, force=None, timeout=120):
    env = {k: v for k, v in os.environ.items()
           if k not in _threads.POLICY and k not in ("NUMBA_THREADING_LAYER",
                                                      _threads.FORCE_VARIABLE)}
    if force:
        env[_threads.FORCE_VARIABLE] = force
    proc = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(imports)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parallel_builds_used(result):
    return any(parallel for _, parallel in result["built"].values())


def assert_mkl_shares_numbas_pool(result):
    """oneMKL (when the step loaded it) runs on the runtime of Numba's layer, and its
    workers sleep after a GEMM."""
    if result["mkl"] is None:
        return
    expected = "tbb" if result["layer"] == "tbb" else "gnu"
    assert result["mkl"]["layer"] == expected, (result["mkl"], result["layer"])
    assert result["mkl"]["threads"] >= 1
    assert result["mkl_idle_cpu"] <= 0.05, result["mkl_idle_cpu"]


def tbb_installed():
    """Whether the tbb wheel's library is in this environment (Numba's TBB layer)."""
    from dualnn import _libs

    return _libs.find(("libtbb.so.12",)) is not None


def assert_openblas_quiet(result):
    pools = result["state"]["openblas"]
    assert pools, "no OpenBLAS found: the policy reports no BLAS pool"
    for path, pool in pools.items():
        assert pool["timeout"] == 4 and not pool["spins"], (path, pool)
    # the workers sleep after a GEMM instead of spinning ~100 ms (clock ticks are 10 ms)
    assert result["idle_cpu"] <= 0.03, result["idle_cpu"]


needs_linux = pytest.mark.skipif(not os.path.exists("/proc/self/task"),
                                 reason="reads /proc")


@needs_linux
def test_dualnn_first_sets_the_variables_and_uses_omp():
    result = run_order([])
    state = result["state"]
    assert state["imported_before"] == []
    assert_openblas_quiet(result)
    assert not any(pool["retimed"] for pool in state["openblas"].values())
    assert result["layer"] == state["numba_layer"] == "omp"
    assert state["parallel_kernels"] and parallel_builds_used(result)
    assert state["warnings"] == []
    assert_mkl_shares_numbas_pool(result)


@needs_linux
@pytest.mark.parametrize("imports", [["numpy"], ["numpy", "sklearn.neural_network"]])
def test_numpy_first_retimes_openblas_at_run_time(imports):
    result = run_order(imports)
    state = result["state"]
    assert "numpy" in state["imported_before"]
    numpy_pools = [pool for path, pool in state["openblas"].items() if "numpy" in path]
    assert numpy_pools and all(pool["retimed"] for pool in numpy_pools)
    assert_openblas_quiet(result)
    assert result["layer"] == "omp" and state["parallel_kernels"]
    assert parallel_builds_used(result)
    assert state["warnings"] == []
    assert_mkl_shares_numbas_pool(result)


@needs_linux
def test_spinning_openblas_left_alone_gives_serial_kernels_and_a_warning():
    result = run_order(["numpy"], force="retime=0")
    state = result["state"]
    assert any(pool["spins"] for pool in state["openblas"].values())
    assert not state["parallel_kernels"]
    assert not parallel_builds_used(result)
    assert any(built[0] for built in result["built"].values())  # the serial ones ran
    assert any("OPENBLAS_THREAD_TIMEOUT=4" in text for text in state["warnings"])


@needs_linux
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch")
def test_torch_first_avoids_its_spinning_libgomp():
    result = run_order(["numpy", "torch"])
    state = result["state"]
    assert state["gomp"] == {"loaded_before_dualnn": True, "spins": True}
    assert_openblas_quiet(result)
    # TBB (where the tbb wheel is installed: loaded by path) or workqueue, never omp
    expected = "tbb" if tbb_installed() else "workqueue"
    assert result["layer"] == state["numba_layer"] == expected
    assert state["parallel_kernels"] and parallel_builds_used(result)
    assert state["warnings"] == []
    assert_mkl_shares_numbas_pool(result)


# -------------------------------------------------------------------- the pure decision

def test_choose_default_is_omp_parallel():
    decision = _threads.choose({})
    assert decision["layers"][0] == "omp" and decision["parallel"]


def test_choose_spinning_gomp_prefers_tbb_then_workqueue():
    without = _threads.choose({"gomp_spins": True})
    with_tbb = _threads.choose({"gomp_spins": True, "tbb": True})
    assert without["layers"][0] == "workqueue" and with_tbb["layers"][0] == "tbb"
    assert sorted(without["layers"]) == ["omp", "tbb", "workqueue"]  # Numba wants all three
    assert without["parallel"]


def test_choose_spinning_openblas_goes_serial_and_user_layer_is_kept():
    assert not _threads.choose({"openblas_spins": True})["parallel"]
    decision = _threads.choose({"gomp_spins": True, "user_layer": "omp"})
    assert decision["layers"] is None and decision["parallel"]


def test_forced_parses_and_rejects(monkeypatch):
    monkeypatch.setenv(_threads.FORCE_VARIABLE, "retime=0, layer=workqueue,blas_threads=1")
    assert _threads.forced() == {"retime": 0, "layer": "workqueue", "blas_threads": 1}
    monkeypatch.setenv(_threads.FORCE_VARIABLE, "layer=gnu")
    with pytest.raises(ConfigurationError, match="layer=gnu"):
        _threads.forced()


@needs_linux
def test_initial_environ_is_the_start_environment_not_later_changes():
    code = ("import os; os.environ['DUALNN_T_LATER'] = '1'; from dualnn._threads import "
            "_initial_environ as f; e = f(); print(e.get('DUALNN_T_START'), "
            "e.get('DUALNN_T_LATER'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, DUALNN_T_START="yes"), timeout=60)
    assert proc.stdout.split() == ["yes", "None"], proc.stderr[-1000:]


# -------------------------------------------------------------------- the benchmark's rows

def test_import_order_bench_rows_and_rotation(monkeypatch):
    from dualnn.benchmarks import import_orders

    rows = import_orders.default_rows(torch_ok=True, sklearn_ok=True)
    steps = {(row["order"], row.get("batch", 512)) for row in rows if row["kind"] == "step"}
    assert {("dualnn first", 512), ("numpy first", 512), ("dualnn first", 4096),
            ("numpy first", 4096), ("numpy+torch first", 512)} <= steps
    assert {row["order"] for row in rows if row["kind"] == "digits"} == set(import_orders.ORDERS)
    assert not any("torch" in row["order"] for row in import_orders.default_rows(False, True))
    calls = []
    monkeypatch.setattr(import_orders, "run_row",
                        lambda row, epochs, steps: calls.append(row["label"]) or {"seconds": 1})
    labelled = [{"label": name} for name in "abc"]
    results = import_orders.measure(labelled, 3, 1, 1, out=lambda *a: None)
    assert calls == list("abcbcacab")  # every row takes every position once
    assert [len(r) for r in results] == [3, 3, 3]
