"""The per-epoch progress bar of fit (tqdm on stderr), and when to show it."""

from __future__ import annotations

import os
import sys

__all__ = ["progress_enabled"]


def progress_enabled(progress=True):
    """Whether :func:`fit` shows a progress bar.

    Off when ``progress`` is false, when the ``CI`` environment variable is set (to
    anything but ``""``, ``0``, ``false`` or ``no``), or when stdout or stderr (where the
    bar is drawn) is not a terminal.
    """
    if not progress:
        return False
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is None or not stream.isatty():
                return False
        except (AttributeError, ValueError):
            return False
    return True


def write_line(text):
    try:
        from tqdm import tqdm
        tqdm.write(text, file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        print(text, file=sys.stderr)


def make_bar(total, epoch, last_epoch):
    from tqdm import tqdm
    return tqdm(total=total, desc=f"epoch {epoch}/{last_epoch}", unit="sample",
                unit_scale=True, leave=True, file=sys.stderr, dynamic_ncols=True)
