"""``dualnn bench --import-orders``: the thread policy's timings in each import order.

Each row runs in a fresh process (run as a script by path, so nothing but the row's own
imports happens before them), rows alternate round-robin (each round starting one row
later), and each is repeated; the table shows the median and the range. Rows:

- the digits fit (64-128-128-10 BatchNorm + ReLU, Adam, batch 64, ``dn.fit``; a one-epoch
  warm-up on a throwaway model keeps kernel loading out of the timing) with dualnn imported
  first, after NumPy, after NumPy + scikit-learn, after NumPy + PyTorch, and after NumPy +
  PyTorch with ``OPENBLAS_THREAD_TIMEOUT=4 OMP_WAIT_POLICY=PASSIVE`` exported (the reference
  a user could always get by hand);
- the MLP step of ``dualnn bench`` (784-1024x3-10 BatchNorm + ReLU, Adam, batch 512 and
  4096, no input gradient on either side) as a ratio to PyTorch eager running the same
  work in its own process (:class:`~dualnn.benchmarks.compare.TorchWorker`), after NumPy
  (exported or not) and after NumPy + PyTorch.

``--alternatives`` adds rows forcing the candidates the policy was chosen among
(``DUALNN_THREAD_POLICY``, see :mod:`dualnn._threads`). The policy actually in force in
each row is printed under the table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

EXPORTED = {"OPENBLAS_THREAD_TIMEOUT": "4", "OMP_WAIT_POLICY": "PASSIVE"}
ORDERS = {
    "dualnn first": [],
    "numpy first": ["numpy"],
    "numpy+sklearn first": ["numpy", "sklearn.neural_network"],
    "numpy+torch first": ["numpy", "torch"],
}
ALTERNATIVES = [
    ("digits", "numpy first", "retime=0,parallel=1", "old: spinning OpenBLAS, parallel"),
    ("digits", "numpy first", "retime=0,parallel=0", "spinning OpenBLAS, serial kernels"),
    ("digits", "numpy first", "retime=0,blas_threads=1,parallel=1",
     "spinning OpenBLAS limited to 1 thread, parallel"),
    ("digits", "numpy+torch first", "layer=omp", "re-timed, omp layer (spinning libgomp)"),
    ("digits", "numpy+torch first", "layer=omp,parallel=0", "re-timed, serial kernels"),
    ("step", "numpy first", "retime=0,parallel=1", "old: spinning OpenBLAS, parallel"),
    ("step", "numpy first", "retime=0,parallel=0", "spinning OpenBLAS, serial kernels"),
    ("step", "numpy first", "retime=0,blas_threads=1,parallel=1",
     "spinning OpenBLAS limited to 1 thread, parallel"),
    ("step", "numpy+torch first", "layer=omp", "re-timed, omp layer (spinning libgomp)"),
    ("step", "numpy+torch first", "layer=omp,parallel=0", "re-timed, serial kernels"),
]


def default_rows(torch_ok, sklearn_ok):
    """The rows of the table: dicts with ``kind``, ``order``, ``env``, ``label``."""
    rows = []
    for order in ORDERS:
        if ("torch" in order and not torch_ok) or ("sklearn" in order and not sklearn_ok):
            continue
        rows.append({"kind": "digits", "order": order, "env": {}, "label": ""})
    if torch_ok:
        rows.append({"kind": "digits", "order": "numpy+torch first", "env": dict(EXPORTED),
                     "label": "variables exported"})
        for batch in (512, 4096):
            rows.append({"kind": "step", "order": "dualnn first", "env": {}, "label": "",
                         "batch": batch})
            rows.append({"kind": "step", "order": "numpy first", "env": {}, "label": "",
                         "batch": batch})
        rows.append({"kind": "step", "order": "numpy first", "env": dict(EXPORTED),
                     "label": "variables exported"})
        rows.append({"kind": "step", "order": "numpy+torch first", "env": {}, "label": ""})
    return rows


def alternative_rows(torch_ok):
    rows = []
    for kind, order, force, label in ALTERNATIVES:
        if "torch" in order and not torch_ok:
            continue
        if kind == "step" and not torch_ok:
            continue
        rows.append({"kind": kind, "order": order, "env": {"DUALNN_THREAD_POLICY": force},
                     "label": f"{label} [{force}]"})
    return rows


def run_row(row, epochs, steps, timeout=600):
    """Run one row in a fresh process; returns its JSON result (``seconds`` or ``ratio``)."""
    env = {k: v for k, v in os.environ.items()
           if k not in EXPORTED and k != "DUALNN_THREAD_POLICY"}
    for name, value in _initial_user_env().items():  # what the user exported, not dualnn
        env[name] = value
    env.update(row["env"])
    spec = json.dumps({"kind": row["kind"], "imports": ORDERS[row["order"]],
                       "epochs": epochs, "steps": steps, "batch": row.get("batch", 512)})
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), spec], env=env,
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"row {row['kind']} / {row['order']} failed: " + " | ".join(tail))
    return json.loads(lines[-1])


def _initial_user_env():
    """The policy variables in the environment this process started with."""
    from .._threads import _initial_environ

    start = _initial_environ()
    return {name: start[name] for name in EXPORTED if name in start}


def measure(rows, repeats, epochs, steps, out=print, json_path=None):
    """Round-robin over ``rows``, ``repeats`` times; returns per-row lists of results.

    With ``json_path``, the results so far are written there after every round.
    """
    results = [[] for _ in rows]
    for r in range(repeats):
        # each round starts one row later, so no row always runs first (or right after
        # the same neighbour) as the machine's speed drifts
        for done, i in enumerate((r + j) % len(rows) for j in range(len(rows))):
            results[i].append(run_row(rows[i], epochs, steps))
            out(f"  round {r + 1}/{repeats}, row {done + 1}/{len(rows)} done")
        if json_path:
            _write_json(json_path, rows, results)
    return results


def _write_json(path, rows, results):
    with open(path, "w") as f:
        json.dump([dict(row, results=res) for row, res in zip(rows, results)], f, indent=2)


def _range(values, fmt):
    values = sorted(values)
    mid = values[(len(values) - 1) // 2]  # the lower median: noise only slows things down
    return f"{fmt.format(mid)} ({fmt.format(values[0])}-{fmt.format(values[-1])})"


def policy_summary(policy):
    """One phrase for a row's policy: layer, serial/parallel kernels, OpenBLAS state."""
    pools = policy["openblas"].values()
    if any(pool["spins"] for pool in pools):
        blas = "spins"
    elif any(pool["retimed"] for pool in pools):
        blas = "re-timed"
    else:
        blas = "timed at load"
    kernels = "parallel" if policy["parallel_kernels"] else "serial"
    return f"{policy['numba_layer'] or 'no layer'}, {kernels} kernels, OpenBLAS {blas}"


def report(rows, results, epochs, out=print):
    """Print the table: one line per row, median (min-max)."""
    out("")
    out(f"{'program':<44} {'import order':<20} {'result (median, range)':<28} policy")
    for row, res in zip(rows, results):
        if row["kind"] == "digits":
            name = f"digits fit, {epochs} epochs"
            value = _range([r["seconds"] for r in res], "{:.2f}") + " s"
        else:
            name = f"MLP step 784-1024x3-10, batch {row.get('batch', 512)}"
            value = _range([r["ratio"] for r in res], "{:.2f}") + "x PyTorch"
        if row["label"]:
            name += f", {row['label']}"
        summary = policy_summary(res[-1]["policy"])
        if len(name) > 44:
            out(name)
            name = ""
        out(f"{name:<44} {row['order']:<20} {value:<28} {summary}")


def main(args, out=print):
    """Run the import-order table (``args``: repeats, epochs, steps, alternatives)."""
    import importlib.util

    torch_ok = importlib.util.find_spec("torch") is not None
    sklearn_ok = importlib.util.find_spec("sklearn") is not None
    if not sklearn_ok:
        out("the import-order table needs scikit-learn (the digits data): "
            "pip install 'dualnn[datasets]'")
        return 1
    rows = default_rows(torch_ok, sklearn_ok)
    if args.alternatives:
        rows += alternative_rows(torch_ok)
    kinds = getattr(args, "only", None)
    if kinds:
        rows = [row for row in rows if row["kind"] == kinds]
    if not torch_ok:
        out("PyTorch is not installed: its rows are skipped")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    out(f"{len(rows)} rows x {args.repeats} repeats, each in a fresh process, alternated; "
        f"load average {load:.1f} on {os.cpu_count()} cores (timings are noisy on a "
        "loaded machine)")
    started = time.perf_counter()
    results = measure(rows, args.repeats, args.epochs, args.steps, out,
                      getattr(args, "json", None))
    report(rows, results, args.epochs, out)
    out(f"({time.perf_counter() - started:.0f} s)")
    return 0


# ------------------------------------------------------------------ the row's own process

def _digits_row(epochs):
    import numpy as np

    import dualnn as dn
    from dualnn.cli import build_model

    data = dn.datasets.load("digits", None, seed=0)
    loss_fn = dn.losses.SoftmaxCrossEntropy()

    def fit(n_epochs):
        dn.seed(0)
        model = build_model(data.n_features, data.n_classes, [128, 128])
        opt = dn.optim.Adam(model.parameters(), lr=1e-3)
        t0 = time.perf_counter()
        dn.fit(model, loss_fn, opt, data.X_train, data.y_train, epochs=n_epochs,
               batch_size=64, progress=False)
        return time.perf_counter() - t0

    fit(1)  # kernel loading stays out of the timing
    seconds = fit(epochs)
    np.asarray(0)
    return {"seconds": seconds}


def _step_row(steps, batch):
    from dualnn.benchmarks import compare

    repeats = 2
    if batch > 512:  # fewer, longer steps: more alternations keep the ratio as steady
        steps, repeats = max(3, steps * 512 // batch), 5
    result = compare.run_step_comparison([batch], repeats=repeats, steps=steps,
                                         dtype="float32", use_torch=True, out=lambda *a: None)
    rates = result["batches"][batch]
    return {"ratio": rates["dualnn"] / rates["pytorch"], "dualnn": rates["dualnn"],
            "pytorch": rates["pytorch"]}


def _row_main(spec):
    import importlib

    for name in spec["imports"]:
        importlib.import_module(name)
    import dualnn._threads as threads

    if spec["kind"] == "digits":
        result = _digits_row(spec["epochs"])
    else:
        result = _step_row(spec["steps"], spec.get("batch", 512))
    result["policy"] = threads.policy_state(start=False)
    print(json.dumps(result))


if __name__ == "__main__":
    _row_main(json.loads(sys.argv[1]))
