"""Every package folder of the library is listed in pyproject.toml's explicit packages.

setuptools installs only the packages it is told about; a folder missing from the list works
in an editable install and is absent from a wheel.
"""

from __future__ import annotations

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _listed():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return set(_lookup(tomllib.load(f), "tool", "setuptools", "packages"))


def _lookup(data, *keys):
    for key in keys:
        data = data[key]
    return data


def _on_disk():
    found = set()
    for top, name in (("dualnn", "dualnn"), ("kernels", "dualnn.kernels")):
        base = ROOT / top
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            if "__pycache__" in rel:
                continue
            found.add(".".join((name, *rel)))
    return found


def test_every_package_folder_is_listed():
    missing = sorted(_on_disk() - _listed())
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_every_listed_package_exists():
    stale = sorted(_listed() - _on_disk())
    assert not stale, f"listed in pyproject.toml but no such package folder: {stale}"
