"""Finding wheel-installed shared libraries (dualnn/_libs.py)."""

import os
import sys

from dualnn import _libs


def test_lib_dirs_start_with_this_environment_and_follow_layered_ones(monkeypatch, tmp_path):
    layered = tmp_path / "lib" / "python3.x" / "site-packages"
    layered.mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [*sys.path, str(layered)])
    dirs = _libs.environment_lib_dirs()
    assert dirs[0] == os.path.join(sys.prefix, "lib")
    assert str(tmp_path / "lib") in dirs
    assert len(dirs) == len(set(dirs))


def test_find_and_load_from_a_layered_environment(monkeypatch, tmp_path):
    site = tmp_path / "lib" / "python3.x" / "site-packages"
    site.mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [*sys.path, str(site)])
    assert _libs.find(("libdualnn-test-absent.so.1",)) is None
    assert _libs.load_global(("libdualnn-test-absent.so.1",)) is None
    fake = tmp_path / "lib" / "libdualnn-test-fake.so.1"
    fake.write_bytes(b"not an ELF file")
    assert _libs.find(("libdualnn-test-fake.so.1",)) == str(fake)
    assert _libs.load_global(("libdualnn-test-fake.so.1",)) is None  # found, not loadable
