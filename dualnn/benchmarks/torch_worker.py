"""PyTorch side of ``dualnn bench``, run as ``python torch_worker.py data.npz``.

It runs as a script by path so it never imports dualnn (whose import sets
``OMP_WAIT_POLICY=PASSIVE``, which slows torch). Protocol: one JSON command per line on
stdin, one JSON reply per line on stdout. The data file holds the initial weights and the
batches (see :func:`dualnn.benchmarks.compare.run_step_comparison` and ``run_digits``).
``"autocast": true`` in a ``time`` or ``losses`` command runs the forward under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (:mod:`dualnn.benchmarks.bf16`).
"""

import functools
import itertools
import json
import sys

import numpy as np
import torch
from timing import time_calls  # this script's own directory is on sys.path

if __name__ == "__main__":
    data = np.load(sys.argv[1])
    dtype = {"float32": torch.float32, "float64": torch.float64}[str(data["dtype"])]
    torch.manual_seed(0)


def mlp(sizes, batchnorm):
    layers = []
    for n_in, n_out in itertools.pairwise(sizes[:-1]):
        layers.append(torch.nn.Linear(n_in, n_out, bias=not batchnorm))
        if batchnorm:
            layers.append(torch.nn.BatchNorm1d(n_out))
        layers.append(torch.nn.ReLU())
    layers.append(torch.nn.Linear(sizes[-2], sizes[-1]))
    return torch.nn.Sequential(*layers).to(dtype)


def load(model, prefix):
    params = list(model.parameters())
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(torch.from_numpy(data[f"{prefix}{i}"]))


def step_fn(model, opt, loss_fn, autocast=False):
    def step(x, y):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def new_step(sizes, batchnorm, prefix, autocast=False):
    """A model loaded with the data file's weights and its Adam step; ``autocast``: the
    forward under ``torch.autocast("cpu", dtype=torch.bfloat16)``."""
    model = mlp(sizes, batchnorm)
    load(model, prefix)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, step_fn(model, opt, torch.nn.CrossEntropyLoss(), autocast)


def train_epochs(step, perms, batch, xtr, ytr):
    for perm in perms:
        for start in range(0, len(perm), batch):
            idx = torch.from_numpy(perm[start:start + batch])
            step(xtr[idx], ytr[idx])


def serve():
    cache = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        kind = cmd["cmd"]
        if kind == "quit":
            break
        if kind == "info":
            reply = {"torch": torch.__version__, "threads": torch.get_num_threads()}
        elif kind == "losses":
            sizes = [int(s) for s in data["sizes"]]
            _, step = new_step(sizes, True, "w", bool(cmd.get("autocast", False)))
            losses = []
            for i in range(int(data["check_x"].shape[0])):
                x = torch.from_numpy(data["check_x"][i])
                y = torch.from_numpy(data["check_y"][i])
                losses.append(float(step(x, y).detach()))
            reply = {"losses": losses}
        elif kind == "time":
            batch = cmd["batch"]
            autocast = bool(cmd.get("autocast", False))
            if (batch, autocast) not in cache:
                sizes = [int(s) for s in data["sizes"]]
                _, step = new_step(sizes, True, "w", autocast)
                x = torch.from_numpy(data[f"x{batch}"])
                y = torch.from_numpy(data[f"y{batch}"])
                step(x, y)
                cache[batch, autocast] = (step, x, y)
            step, x, y = cache[batch, autocast]
            reply = {"times": time_calls(functools.partial(step, x, y), cmd["steps"],
                                             cmd["warmup"])}
        elif kind == "digits":
            sizes = [int(s) for s in data["digits_sizes"]]
            xtr = torch.from_numpy(data["xtr"])
            ytr = torch.from_numpy(data["ytr"])
            perms = data["perms"]
            batch = int(data["digits_batch"])
            _, warm = new_step(sizes, False, "d")  # first-use costs stay out of the timing
            for start in range(0, 5 * batch, batch):
                warm(xtr[start:start + batch], ytr[start:start + batch])
            model, step = new_step(sizes, False, "d")
            (seconds,) = time_calls(functools.partial(train_epochs, step, perms, batch, xtr, ytr))
            model.eval()
            with torch.no_grad():
                pred = model(torch.from_numpy(data["xte"])).argmax(1).numpy()
            reply = {"seconds": seconds, "accuracy": float((pred == data["yte"]).mean())}
        else:
            reply = {"error": f"unknown command {kind!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
