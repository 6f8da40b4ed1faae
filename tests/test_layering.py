"""The layering rules of DESIGN.md, enforced on the source tree."""

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
    code = ("import sys, time; t = time.perf_counter(); import dualnn; "
            "dt = time.perf_counter() - t; "
            "assert 'cupy' not in sys.modules, 'cupy imported'; "
            "assert 'numba' not in sys.modules, 'numba imported'; "
            "assert 'torch' not in sys.modules; print(dt)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert float(out.stdout.strip()) < 2.0  # budget 0.5 s; generous here for noisy CI
