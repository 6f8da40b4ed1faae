"""Inverted dropout."""

from __future__ import annotations

from ..backend.base import dtype_name
from ..errors import ConfigurationError
from .base import Layer


class Dropout(Layer):
    """Zero each input with probability ``p`` in training and scale the rest by ``1/(1-p)``.

    This is *inverted* dropout, as ``torch.nn.Dropout``: the expected activation is the
    same in training and evaluation, so evaluation is the identity. The classic notes
    instead keep units unscaled in training and multiply the outgoing weights by the keep
    probability at test time; both give the same expected output, and inverted scaling
    leaves inference untouched.

    The mask is ``(u >= p) / (1 - p)`` for ``u`` uniform in [0, 1) drawn from the
    backend's generator (seeded by :func:`dualnn.seed`), so a seed gives the same masks on
    a backend from run to run. On backends that reuse buffers the mask lives in one array
    per layer, rewritten by each training forward; the draws are the ones a fresh array
    would receive, so masks are unchanged from versions that allocated it each step.

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
        self._mask_kept = None
        self._shape = None
        self._dtype_seen = None

    forward_options = frozenset({"out"})

    def forward(self, x, training=False, out=None):
        """``x`` (any shape) -> ``x * mask`` in training, ``x`` itself otherwise.

        ``out`` is an optional preallocated array of ``x``'s shape and dtype the training
        output is written into (outside training, or with ``p = 0``, ``x`` itself is
        returned and ``out`` is left alone). On a backend that reuses buffers the mask
        lives in one array per layer, rewritten by each training forward.
        """
        self._check_input(x)
        self._shape = tuple(x.shape)
        self._dtype_seen = x.dtype
        if not training or self.p == 0:
            self._mask = None
            return x
        if self.p == 1:
            self._mask = self.xp.zeros_like(x)
            return self._mask if out is None else self.backend.assign(out, self._mask)
        self._mask = self.backend.dropout_mask(tuple(x.shape), x.dtype, self.p,
                                               out=self._mask_buffer(x))
        if out is None:
            return x * self._mask
        return self.backend.multiply_into(x, self._mask, out)

    def _mask_buffer(self, x):
        if not getattr(self.backend, "reuses_buffers", False):
            return None
        key = (tuple(x.shape), dtype_name(x.dtype))
        kept = self.__dict__.get("_mask_kept")
        if kept is None or kept[0] != key:
            kept = self._mask_kept = (key, self.backend.empty(key[0], key[1]))
        return kept[1]

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
