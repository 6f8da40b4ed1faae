"""Atomic file replacement, shared by checkpoints and the JSON history logger.

The content is written to a temporary file in the destination directory, flushed and
fsync'ed, renamed over the destination with ``os.replace`` and the directory fsync'ed: a
reader sees the old file or the new one, never a mix, and a failed write (full disk,
exception in the writer) leaves the old file byte-identical. A process killed while
writing leaves its temporary file behind (``.<name>.<pid>.<token>.tmp``); the next write to
the same path removes temporaries of processes that no longer exist.
"""

from __future__ import annotations

import os
import secrets

__all__ = ["write_atomic"]


def _temp_prefix(base):
    return f".{base}."


def _remove_stale_temps(directory, base):
    """Delete temporaries of this destination left by processes that no longer exist."""
    prefix = _temp_prefix(base)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        middle = name[len(prefix):-len(".tmp")].split(".")
        if len(middle) != 2 or not middle[0].isdigit():
            continue
        pid = int(middle[0])
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # still running: maybe writing right now
        except ProcessLookupError:
            pass
        except (PermissionError, OSError):
            continue  # exists (another user) or cannot tell: leave it
        try:
            os.remove(os.path.join(directory, name))
        except OSError:
            pass


def _fsync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: directories cannot be opened
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path, write, binary=True):
    """Replace ``path`` by what ``write(fh)`` writes, atomically.

    Parameters
    ----------
    path : str or path
        Destination; its directory must exist.
    write : callable
        Called with the open temporary file (binary, or UTF-8 text when ``binary`` is
        False).
    binary : bool

    Raises
    ------
    OSError
        From the file system (e.g. ``ENOSPC``); the destination is left as it was and the
        temporary file is removed. Any exception of ``write`` propagates the same way.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    _remove_stale_temps(directory, base)
    tmp = os.path.join(directory,
                       f"{_temp_prefix(base)}{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        kwargs = {} if binary else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, "wb" if binary else "w", **kwargs) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)
