"""Alias of :mod:`dualnn.training.callbacks` (kept so ``import dualnn.callbacks`` keeps working)."""

import sys

from .training import callbacks as _module

sys.modules[__name__] = _module
