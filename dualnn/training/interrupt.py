"""Ctrl-C during :func:`~dualnn.training.fit`: finish the step, then stop cleanly.

While ``fit`` runs in the main thread with Python's default SIGINT handler, a first
Ctrl-C only sets :attr:`DeferredInterrupt.pending`; the loop checks it between steps and
stops with the model, optimizer and batch-norm statistics at that completed step. A
second Ctrl-C raises ``KeyboardInterrupt`` at once (an escape hatch: the state may then
be mid-step). A handler the user installed, or a run outside the main thread, is left
alone.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["DeferredInterrupt"]


class DeferredInterrupt:
    """Context manager deferring the first SIGINT; see the module notes.

    Attributes
    ----------
    pending : bool
        A Ctrl-C arrived and was not acted on yet.
    forced : bool
        A second Ctrl-C arrived (raised at once).
    """

    def __init__(self):
        self.pending = False
        self.forced = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.pending:
            self.forced = True
            raise KeyboardInterrupt
        self.pending = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        return False
