"""``dualnn bench --large-batch``: the experiment from the command line, in miniature."""

from __future__ import annotations

from dualnn.cli import main


def test_bench_large_batch_quick_prints_the_table_and_saves_the_plot(tmp_path, capsys):
    plot = tmp_path / "curves.png"
    assert main(["bench", "--large-batch", "--quick", "--epochs", "1", "--plot",
                 str(plot)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| (") or "baseline" in line]
    assert len(rows) == 5
    # 2048 rows: 16 steps of 128 for the baseline, 2 of 1024 for the large batches
    assert "| baseline (batch 128) | 128 | sgd |" in out and "| 16 |" in out
    assert "| (c) 1024, LAMB + warmup | 1024 | lamb |" in out
    assert plot.stat().st_size > 1000


def test_bench_large_batch_rejects_bad_options(capsys):
    assert main(["bench", "--large-batch", "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert main(["bench", "--large-batch", "--help"]) == 0
    assert "--quick" in capsys.readouterr().out
