"""Training: the loop (:func:`fit`, :func:`evaluate`, :func:`predict`), :class:`History`,
callbacks and checkpoints (:func:`save`, :func:`load`).

Modules: :mod:`~dualnn.training.loop` (the loop), :mod:`~dualnn.training.checks` (what is
validated before training), :mod:`~dualnn.training.history`,
:mod:`~dualnn.training.progress`, :mod:`~dualnn.training.callbacks`,
:mod:`~dualnn.training.checkpoint` and :mod:`~dualnn.training.atomic` (atomic file writes).
The public names are also at the top level: ``dn.fit``, ``dn.save``, ``dn.callbacks``...
"""

from . import callbacks
from .checkpoint import Checkpoint, load, save
from .history import History, TrainingRun
from .loop import evaluate, fit, predict
from .progress import progress_enabled

__all__ = ["Checkpoint", "History", "TrainingRun", "callbacks", "evaluate", "fit", "load",
           "predict", "progress_enabled", "save"]
