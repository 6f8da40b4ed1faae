"""``dualnn bench --precision mixed_bfloat16`` (dualnn.benchmarks.bf16): routing, the
bfloat16 GEMM bound against the float32 one, a tiny run without PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

from dualnn import cli
from dualnn.backend import bf16_gemm
from dualnn.benchmarks import bf16, compare

AVAILABLE, REASON = bf16_gemm.availability()


def test_cli_routes_precision_to_the_bf16_bench(monkeypatch):
    seen = []
    monkeypatch.setattr(bf16, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["bench", "--precision", "mixed_bfloat16", "--repeats", "1"]) == 0
    assert seen == [["--precision", "mixed_bfloat16", "--repeats", "1"]]
    with pytest.raises(SystemExit):
        bf16.build_parser().parse_args(["--precision", "float16"])


@pytest.mark.skipif(not AVAILABLE, reason=f"bfloat16 GEMM unavailable: {REASON}")
def test_bf16_gemm_bound_computes_the_float32_bound_within_bfloat16_rounding():
    sizes = (20, 16, 16, 16, 4)
    rng = np.random.default_rng(0)
    weights = compare.initial_weights(sizes, True, "float32", rng)
    x = rng.standard_normal((8, 20)).astype(np.float32)
    f32, b16 = compare.GemmBound(sizes, "float32", weights, x), \
        bf16.Bf16GemmBound(sizes, "float32", weights, x)
    f32()
    b16()
    for got, want in zip(b16.dw, f32.dw):
        scale = np.abs(want).max()
        assert np.abs(got - want).max() <= 0.03 * scale
        assert not np.array_equal(got, want)


def test_tiny_run_without_torch(capsys):
    result = bf16.run_step([8], repeats=1, steps=1, warmup=0, use_torch=False)
    rates = result["batches"][8]
    assert all(v[0] > 0 for v in rates.values())
    assert ("gemms bfloat16" in rates) == AVAILABLE
    text = capsys.readouterr().out
    assert "dualnn mixed_bfloat16 / dualnn float32" in text
    assert ("unavailable" in text) != AVAILABLE
