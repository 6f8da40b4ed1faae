"""Inverted dropout."""

from __future__ import annotations

from ..errors import ConfigurationError
from .base import Layer


class Dropout(Layer):
    """Zero each input with probability ``p`` in training and scale the rest by ``1/(1-p)``.

    This is *inverted* dropout, as ``torch.nn.Dropout``: the expected activation is the
    same in training and evaluation, so evaluation is the identity. The classic notes
    instead keep units unscaled in training and multiply the outgoing weights by the keep
    probability at test time; both give the same expected output, and inverted scaling
    leaves inference untouched.

    Parameters
    ----------
    p : float in [0, 1]
        Probability of dropping a unit (not of keeping it). ``p = 1`` drops everything.
    """

    def __init__(self, p=0.5):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ConfigurationError(f"Dropout: p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self._mask = None
        self._shape = None
        self._dtype_seen = None

    def get_config(self):
        return {"p": self.p}

    def _clear_cache(self):
        self._mask = None
        self._shape = None
        self._dtype_seen = None

    def forward(self, x, training=False):
        self._check_input(x)
        self._shape = tuple(x.shape)
        self._dtype_seen = x.dtype
        if not training or self.p == 0:
            self._mask = None
            return x
        if self.p == 1:
            self._mask = self.xp.zeros_like(x)
            return self._mask
        keep = self.backend.random_uniform(tuple(x.shape), x.dtype) >= self.p
        self._mask = self.xp.astype(keep, x.dtype) * (1 / (1 - self.p))
        return x * self._mask

    backward_options = frozenset({"overwrite"})

    def backward(self, dy, *, overwrite=False):
        """``dy`` times the mask; with ``overwrite`` the product is written into ``dy``."""
        self._check_grad(dy, self._shape, self._dtype_seen)
        if self._mask is None:
            return dy
        if overwrite:
            dy *= self._mask
            return dy
        return dy * self._mask
