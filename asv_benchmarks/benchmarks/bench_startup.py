"""Start-up costs: ``import dualnn`` and the first training step's JIT compilation.

Cold: a fresh process with ``NUMBA_CACHE_DIR`` pointing at an empty directory, so every
kernel the step uses compiles. Warm: the same in a directory a previous process filled,
so kernels load from Numba's on-disk cache. Both report the first step's wall time minus
a second step's (the compile/load overhead), measured inside the subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

FIRST_STEP = r"""
import json, time
t0 = time.perf_counter()
import numpy as np
import dualnn as dn
t_import = time.perf_counter() - t0
dn.seed(0)
L = dn.layers
model = dn.Sequential(L.Linear(64, 128, bias=False), L.BatchNorm(128), L.ReLU(),
                      L.Linear(128, 10))
loss_fn = dn.losses.SoftmaxCrossEntropy()
opt = dn.optim.Adam(model.parameters())
rng = np.random.default_rng(0)
x = rng.standard_normal((256, 64)).astype("float32")
y = rng.integers(0, 10, 256)
times = []
for _ in range(2):
    t = time.perf_counter()
    loss_fn.forward(model.forward(x, training=True), y)
    model.backward(loss_fn.backward())
    opt.step(); opt.zero_grad()
    times.append(time.perf_counter() - t)
print(json.dumps({"import": t_import, "first": times[0], "second": times[1]}))
"""


def _run(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", FIRST_STEP], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


class ImportTime:
    """Wall time of ``import dualnn`` in a fresh interpreter (asv's timeraw)."""

    def timeraw_import_dualnn(self):
        return "import dualnn"

    def timeraw_import_numpy(self):
        return "import numpy"  # the floor dualnn's import stands on


class FirstStepCompile:
    """First-use overhead of a small training step: cold vs warm Numba cache."""

    params = [["cold", "warm"]]
    param_names = ["cache"]
    timeout = 300
    number = 1
    repeat = 1

    def setup(self, cache):
        self.dir = tempfile.mkdtemp(prefix="dualnn-numba-cache-")
        if cache == "warm":
            _run(self.dir)

    def teardown(self, cache):
        shutil.rmtree(self.dir, ignore_errors=True)

    def track_first_step_overhead(self, cache):
        result = _run(self.dir)
        return result["first"] - result["second"]

    track_first_step_overhead.unit = "seconds"
