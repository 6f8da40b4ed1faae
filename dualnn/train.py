"""Alias of :mod:`dualnn.training.loop` (kept so ``import dualnn.train`` keeps working)."""

import sys

from .training import loop as _module

sys.modules[__name__] = _module
