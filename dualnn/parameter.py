"""Trainable arrays: value, gradient and the optimizer state that belongs to them."""

from __future__ import annotations

from .backend.base import dtype_name


class Parameter:
    """A trainable array of a layer.

    Attributes
    ----------
    data : array
        The value, on the owning layer's device. Optimizers update it in place, so it may
        be a view into a larger flat buffer.
    grad : array
        Same shape and dtype as ``data``. ``backward`` *adds* into it (as in PyTorch);
        :meth:`zero_grad` clears it.
    name : str
        The name inside its layer (``"weight"``, ``"bias"``, ``"gamma"``...); models
        prefix it with the layer's position (``"0.weight"``).
    state : dict
        Optimizer state for this parameter (moments, step count). Kept here, not in
        the optimizer, so ``model.to(device)`` moves it with the parameter.
    """

    __slots__ = ("data", "_grad", "_grad_stale", "name", "state", "backend", "__weakref__")

    def __init__(self, data, backend, name="param"):
        self.backend = backend
        self.data = data
        self._grad = backend.zeros_like(data)
        self._grad_stale = False
        self.name = name
        self.state = {}

    @property
    def grad(self):
        """The accumulated gradient (zeros after :meth:`zero_grad`)."""
        if self._grad_stale:
            self._grad[...] = 0
            self._grad_stale = False
        return self._grad

    @grad.setter
    def grad(self, value):
        self._grad = value
        self._grad_stale = False

    def gradient_buffer(self):
        """``(grad_array, overwrite)`` for a layer's backward.

        ``overwrite`` is true when the gradient was zeroed and nothing has been added
        since: the layer may then *write* its gradient (e.g. a GEMM with ``out=``)
        instead of adding it, which saves clearing and re-reading the buffer.
        """
        overwrite = self._grad_stale
        self._grad_stale = False
        return self._grad, overwrite

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return dtype_name(self.data.dtype)

    @property
    def size(self):
        n = 1
        for s in self.shape:
            n *= s
        return n

    def zero_grad(self):
        """Set the gradient to zero (in place, done lazily at the next use)."""
        self._grad_stale = True

    def to(self, backend):
        """Move value, gradient and optimizer state onto ``backend``'s device."""
        if backend is self.backend:
            return self
        old = self.backend
        self.data = backend.store(old.to_host(self.data))
        self.grad = backend.store(old.to_host(self.grad))
        self.state = {
            key: backend.store(old.to_host(value)) if old.owns(value) else value
            for key, value in self.state.items()
        }
        self.backend = backend
        return self

    def __repr__(self):
        return f"Parameter(name={self.name!r}, shape={self.shape}, dtype={self.dtype}, " \
               f"device={self.backend.device!r})"
