"""One command for a machine with a GPU: the GPU tests, then training throughput.

    python tests/gpu/run_gpu_suite.py

1. runs ``tests/gpu`` (CPU/GPU parity of fit, Sequential, every optimizer, dropout; the
   fused kernels against the reference on CuPy arrays) and prints pytest's summary;
2. times ``fit`` steps of a 784-1024-1024-10 float32 MLP with Adam at batch 4,096, 16,384
   and 65,536 (data on the device) and prints samples/s next to the bandwidth bound on
   paper (bytes a step must move / the device's DRAM bandwidth);
3. times the same model at batch 16,384 in float32, mixed_float16 and mixed_bfloat16.

Without CuPy or a GPU it says so and exits 0. It prints only what it measured.
"""

from __future__ import annotations

import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np

WIDTHS = (784, 1024, 1024, 10)
BATCHES = (4096, 16384, 65536)
MIXED_BATCH = 16384


def gpu_available():
    try:
        import cupy

        return bool(cupy.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def bandwidth_bytes_per_s():
    """Peak DRAM bandwidth from the device properties (2 transfers per memory clock)."""
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    return 2.0 * props["memoryClockRate"] * 1e3 * props["memoryBusWidth"] / 8.0, props


def bytes_per_step(batch, widths=WIDTHS, itemsize=4):
    """Bytes a float32 fit step must move at least, on paper.

    Parameters P: three GEMMs read each weight (forward, dW, dX) = 3P, Adam reads param,
    grad, two moments and writes three = 7P. Activations A = batch * sum(widths[1:]):
    forward writes and backward reads each output, the activation backward reads and
    writes once more (about 4A), plus the input batch read twice (forward and dW).
    """
    params = sum(a * b + b for a, b in pairwise(widths))
    activations = batch * sum(widths[1:])
    return itemsize * (10 * params + 4 * activations + 2 * batch * widths[0])


def throughput(batch, steps=20, precision="float32"):
    import cupy

    import dualnn as dn

    rng = np.random.default_rng(0)
    n = batch * 4
    X = rng.standard_normal((n, WIDTHS[0])).astype(np.float32)
    y = rng.integers(0, WIDTHS[-1], n)
    gpu = dn.device.backend_for("gpu")
    with dn.use_backend(gpu):
        layers = []
        for a, b in pairwise(WIDTHS):
            layers += [dn.layers.Linear(a, b), dn.layers.ReLU()]
        model = dn.Sequential(*layers[:-1])
        opt = dn.optim.Adam(model.parameters(), lr=1e-3)
        loss = dn.losses.SoftmaxCrossEntropy()
        dn.fit(model, loss, opt, X, y, epochs=1, batch_size=batch, progress=False,
               precision=precision)  # warm up
        epochs = max(1, steps // 4)
        cupy.cuda.Device().synchronize()
        start = time.perf_counter()
        dn.fit(model, loss, opt, X, y, epochs=epochs, batch_size=batch, progress=False,
               precision=precision)
        cupy.cuda.Device().synchronize()
        elapsed = time.perf_counter() - start
    return epochs * n / elapsed


def main():
    if not gpu_available():
        print("no CuPy or no usable CUDA GPU: nothing to run (the CuPy double runs the GPU "
              "path anywhere: python -m pytest tests/test_cupy_double_suite.py -s)")
        return 0
    here = Path(__file__).resolve().parent
    result = subprocess.run([sys.executable, "-m", "pytest", str(here), "-q", "-p",
                             "no:cacheprovider"], cwd=here.parent.parent, check=False)
    bandwidth, props = bandwidth_bytes_per_s()
    name = props.get("name", b"?")
    print(f"\ndevice: {name.decode() if isinstance(name, bytes) else name}, "
          f"DRAM bound {bandwidth / 1e9:.0f} GB/s")
    print(f"{'batch':>8} {'samples/s measured':>20} {'bound on paper':>16} {'fraction':>9}")
    for batch in BATCHES:
        measured = throughput(batch)
        bound = batch * bandwidth / bytes_per_step(batch)
        print(f"{batch:>8} {measured:>20.0f} {bound:>16.0f} {measured / bound:>9.2f}")
    print(f"\nmixed precision (16-bit activations and gradients), batch {MIXED_BATCH}:")
    print(f"{'precision':>16} {'samples/s measured':>20}")
    for precision in ("float32", "mixed_float16", "mixed_bfloat16"):
        print(f"{precision:>16} {throughput(MIXED_BATCH, precision=precision):>20.0f}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
