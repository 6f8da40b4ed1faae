"""``dualnn train --workers N``, ``dualnn info`` and ``dualnn bench --workers``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import dualnn as dn
from dualnn import cli
from dualnn.distributed import _mpi

from .conftest import needs_mpi

WORKER_ENV = {"DUALNN_FUSED": "0", "DUALNN_DEVICE": "cpu", "CI": "1"}


def run_cli(args, cwd, timeout=90):
    env = dict(os.environ, **WORKER_ENV)
    return subprocess.run([sys.executable, "-m", "dualnn.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout, check=False)


@needs_mpi
def test_train_on_two_workers_runs_end_to_end_and_prints_one_result(tmp_path):
    ckpt = tmp_path / "two.npz"
    proc = run_cli(["train", "--workers", "2", "--epochs", "2", "--hidden", "32", "--lr", "0.01",
                    "--no-progress", "--output", str(ckpt)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert sum("test accuracy" in line for line in lines) == 1, proc.stdout
    assert sum(line.startswith("dualnn: training") for line in lines) == 1, proc.stdout
    assert "batch 64 per worker x 2 workers" in proc.stdout
    accuracy = float(proc.stdout.split("test accuracy ")[1].split("%")[0])
    assert accuracy > 80.0, proc.stdout
    checkpoint = dn.load(str(ckpt))
    assert checkpoint.epoch == 2


def test_workers_without_mpi4py_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(_mpi, "mpi4py_available", lambda: False)
    code = cli.main(["train", "--workers", "2", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_RUNTIME
    assert "dualnn: error: --workers 2 needs mpi4py and mpiexec, and mpi4py is not " \
           "installed" in err
    assert 'pip install -e ".[mpi]"' in err


@pytest.mark.parametrize("value", ["0", "-3"])
def test_workers_below_one_is_a_usage_error(capsys, value):
    code = cli.main(["train", "--workers", value])
    assert code == cli.EXIT_USAGE
    assert f"--workers must be >= 1 (processes to train on), got {value}" \
        in capsys.readouterr().err


def test_bench_workers_below_two_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--workers", "1"])
    assert "--workers must be >= 2" in capsys.readouterr().err


def test_info_describes_distributed_without_starting_mpi(tmp_path):
    code = ("import io, sys; from dualnn import cli; buf = io.StringIO(); "
            "cli.cmd_info(None, buf); print(buf.getvalue()); "
            "MPI = sys.modules.get('mpi4py.MPI'); "
            "print('MPI started:', bool(MPI and MPI.Is_initialized()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {line.split("  ")[0].strip(): line for line in proc.stdout.splitlines()}
    for key in ("mpi_library", "size", "rank", "nccl", "collective_timeout"):
        assert f"distributed {key}" in rows, proc.stdout
    assert "distributed size" in rows and rows["distributed size"].split()[-1] == "1"
    assert "MPI started: False" in proc.stdout


def test_import_dualnn_exports_distributed_without_loading_mpi(tmp_path):
    code = ("import sys, dualnn as dn; import numpy as np; "
            "m = dn.Sequential(dn.layers.Linear(3, 2)); "
            "opt = dn.optim.SGD(m.parameters(), lr=0.1); "
            "dn.fit(m, dn.losses.SoftmaxCrossEntropy(), opt, np.ones((8, 3)), "
            "np.zeros(8, dtype=int), epochs=1, batch_size=4, progress=False); "
            "print(dn.distributed.size(), 'distributed' in dn.__all__, "
            "'mpi4py' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60, check=False,
                          env=dict(os.environ, **WORKER_ENV))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1", "True", "False"]


@needs_mpi
def test_ctrl_c_on_train_workers_stops_every_rank_and_saves(tmp_path):
    ckpt = tmp_path / "stopped.npz"
    env = dict(os.environ, **WORKER_ENV)
    proc = subprocess.Popen([sys.executable, "-m", "dualnn.cli", "train", "--workers", "2",
                             "--epochs", "100000", "--hidden", "16", "--no-progress",
                             "--output", str(ckpt)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        assert proc.stdout.readline().startswith("dualnn: training")
        time.sleep(3.0)  # training is under way (the header is printed before fit)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted after step" in out, out + err[-2000:]
    assert out.count("interrupted after step") == 1
    assert dn.load(str(ckpt)).model is not None
