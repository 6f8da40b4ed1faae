"""dualnn.benchmarks: the one timing helper, the PyTorch worker as a real script that never
imports dualnn, and the aliases (python -m dualnn.bench, dualnn bench)."""

from __future__ import annotations

import ast
import os

import numpy as np
import pytest

from dualnn.benchmarks import compare, timing


def test_time_calls_runs_warmup_then_times_each_step():
    calls = []
    times = timing.time_calls(lambda: calls.append(1), steps=3, warmup=2)
    assert len(calls) == 5 and len(times) == 3 and all(t >= 0 for t in times)


def test_the_worker_is_a_file_that_does_not_import_dualnn():
    assert os.path.isfile(compare.WORKER_SCRIPT)
    with open(compare.WORKER_SCRIPT, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert "dualnn" not in imported and "timing" in imported
    assert not hasattr(compare, "WORKER_SOURCE")


def test_worker_answers_with_the_shared_timing_helper(tmp_path):
    pytest.importorskip("torch")
    sizes = (4, 6, 3)
    rng = np.random.default_rng(0)
    weights = compare.initial_weights(sizes, True, "float32", rng)
    data = {f"w{i}": w for i, w in enumerate(weights)}
    path = tmp_path / "bench.npz"
    np.savez(path, sizes=np.array(sizes), dtype=np.array("float32"),
             x8=rng.standard_normal((8, 4)).astype(np.float32), y8=rng.integers(0, 3, 8), **data)
    worker = compare.TorchWorker(str(path))
    try:
        assert "torch" in worker.ask(cmd="info")
        times = worker.ask(cmd="time", batch=8, steps=3, warmup=1)["times"]
        assert len(times) == 3 and min(times) > 0
    finally:
        worker.close()
    assert worker.proc.returncode == 0


def test_bench_runs_without_torch(capsys):
    assert compare.main(["--no-torch", "--batch-sizes", "8", "--repeats", "1", "--steps", "1"],
                        prog="dualnn bench") == 0
    assert "gemm bound" in capsys.readouterr().out


def test_step_comparison_with_torch_checks_the_losses_agree():
    pytest.importorskip("torch")
    lines = []
    result = compare.run_step_comparison([16], repeats=1, steps=1, dtype="float32",
                                         use_torch=True, out=lines.append)
    assert result["losses_agree"], lines
    assert any(line.startswith("first ") and "(batch 16)" in line for line in lines)
    assert set(result["batches"][16]) == {"dualnn", "gemm", "pytorch"}
