"""The layering rules of the project (see docs/layout.md), enforced on the source tree."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEVICE_AGNOSTIC = ["dualnn/layers", "dualnn/losses.py", "dualnn/optim", "dualnn/init.py"]
FORBIDDEN = {"numpy", "cupy", "kernels", "dualnn.kernels", "numba"}


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolve against the package path
                parts = path.relative_to(ROOT).with_suffix("").parts[:-node.level]
                module = ".".join(parts + ((module,) if module else ()))
                if module.startswith("kernels") or ".kernels" in module:
                    yield "kernels", node.lineno
                for alias in node.names:
                    if alias.name == "kernels":
                        yield "kernels", node.lineno
            yield module, node.lineno


def _files():
    for entry in DEVICE_AGNOSTIC:
        path = ROOT / entry
        yield from ([path] if path.is_file() else sorted(path.rglob("*.py")))


def test_device_agnostic_modules_never_import_array_libraries_or_kernels():
    offenders = []
    files = list(_files())
    assert len(files) >= 8, files
    for path in files:
        for module, line in _imports(path):
            top = module.split(".")[0]
            if top in FORBIDDEN or module in FORBIDDEN:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not offenders, "\n".join(offenders)


def test_the_checker_catches_an_offender(tmp_path):
    bad = ROOT / "dualnn" / "layers" / "_offender_probe.py"
    bad.write_text("import numpy as np\nfrom ..kernels import reference\n")
    try:
        found = [m for m, _ in _imports(bad)]
        assert "numpy" in found and "kernels" in found
    finally:
        bad.unlink()


def test_kernels_never_import_dualnn():
    for path in sorted((ROOT / "kernels").rglob("*.py")):
        for module, line in _imports(path):
            assert not module.startswith("dualnn"), f"{path.name}:{line} imports {module}"


def test_import_is_light():
    """``import dualnn`` loads no optional heavy library (its cost is tracked by asv's
    start-up benchmark, not timed here)."""
    heavy = ["cupy", "numba", "torch", "mpi4py", "sklearn", "onnx", "onnxruntime",
             "matplotlib", "scipy", "tqdm"]
    code = ("import sys, dualnn; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", f"import dualnn loaded: {out.stdout.strip()}"


# ---------------------------------------------------------------- the order of the packages
# Lowest first; a module may import its own level or below, never above (docs/layout.md).
# ``dualnn.kernels`` sits below all of them and never imports dualnn.
LEVELS = [
    {"errors", "_threads", "_libs", "collectives"},
    {"backend", "device"},
    {"parameter", "init", "layers", "losses", "optim", "gradcheck", "precision", "memory"},
    {"data", "datasets", "training", "distributed", "interop", "plotting"},
    {"sklearn", "export", "cli", "benchmarks", "experiments", "callbacks", "checkpoint",
     "train", "bench"},
]


def _level(module):
    parts = module.split(".")
    if parts[0] != "dualnn" or len(parts) == 1:
        return None
    if parts[1] == "kernels":
        return -1
    for index, names in enumerate(LEVELS):
        if parts[1] in names:
            return index
    raise AssertionError(f"{module}: top-level module missing from LEVELS in this test")


def _dualnn_modules():
    modules = {}
    for path in sorted((ROOT / "dualnn").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


def _dualnn_imports(module, path, modules, top_level_only=False):
    """Absolute names of the dualnn modules ``module`` imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = [f"{target}.{alias.name}" for alias in node.names
                          if f"{target}.{alias.name}" in modules]
            yield from (submodules or [target])


def test_nothing_below_imports_anything_above():
    modules = _dualnn_modules()
    offenders = []
    for module, path in modules.items():
        if module == "dualnn":
            continue
        own = _level(module)
        for target in _dualnn_imports(module, path, modules):
            level = _level(target)
            if level is not None and level > own:
                offenders.append(f"{module} (level {own}) imports {target} (level {level})")
    assert not offenders, "\n".join(offenders)


def test_no_import_cycles_between_modules():
    modules = _dualnn_modules()
    graph = {m: {t for t in _dualnn_imports(m, p, modules, top_level_only=True)
                 if t in modules and t not in (m, "dualnn")}
             for m, p in modules.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "\n".join(cycles)
