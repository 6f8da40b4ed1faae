"""Finding shared libraries that Python wheels install into an environment's ``lib/``.

Wheels such as ``mkl`` and ``tbb`` put ``libmkl_rt.so.2`` or ``libtbb.so.12`` in
``<prefix>/lib``, which is not on the dynamic linker's search path; a library that needs
them by name (Numba's ``tbbpool`` extension needs ``libtbb.so.12``) then fails to load.
:func:`load_global` loads one by path with ``RTLD_GLOBAL`` so later ``dlopen`` calls
find it by its soname.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys


def environment_lib_dirs():
    """The ``lib/`` folders of this Python's environment and of every environment on
    ``sys.path`` (layered environments), in order, without repeats."""
    prefixes = [sys.prefix, sys.exec_prefix, sys.base_prefix]
    for entry in sys.path:  # <prefix>/lib/pythonX.Y/site-packages
        parts = os.path.normpath(entry or ".").split(os.sep)
        if len(parts) > 3 and parts[-1] == "site-packages" and parts[-3] == "lib":
            prefixes.append(os.sep.join(parts[:-3]))
    return [os.path.join(prefix, "lib") for prefix in dict.fromkeys(prefixes)]


def find(names, linker_name=None):
    """The path of the first of ``names`` found in :func:`environment_lib_dirs`, else
    what the dynamic linker finds for ``linker_name`` (``ctypes.util.find_library``), else
    ``None``."""
    for folder in environment_lib_dirs():
        for name in names:
            path = os.path.join(folder, name)
            if os.path.exists(path):
                return path
    return ctypes.util.find_library(linker_name) if linker_name else None


def load_global(names, linker_name=None):
    """Load the first loadable of ``names`` with ``RTLD_GLOBAL``: by soname if the linker
    already finds it, else from :func:`environment_lib_dirs`. Returns the handle or ``None``."""
    candidates = list(names)
    path = find(names)
    if path:
        candidates.append(path)
    for candidate in candidates:
        try:
            return ctypes.CDLL(candidate, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
    return None
