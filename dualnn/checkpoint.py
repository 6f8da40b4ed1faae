"""Alias of :mod:`dualnn.training.checkpoint` (kept so ``import dualnn.checkpoint`` keeps working)."""

import sys

from .training import checkpoint as _module

sys.modules[__name__] = _module
