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
        prepare = getattr(backend, "prepare_dtype", None)
        if prepare is not None:  # GPU kernels compile here, never inside a step
            prepare(dtype_name(data.dtype))
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
        prepare = getattr(backend, "prepare_dtype", None)
        if prepare is not None:
            prepare(self.dtype)
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


class FlatParameters:
    """Parameters of one backend and dtype packed into one flat buffer per kind.

    Values, gradients and each optimizer state array of all ``params`` live in one 1-D
    buffer per kind; every ``Parameter``'s ``data``, ``grad`` and ``state[key]`` become
    views (reshaped slices) of them, so an elementwise optimizer updates all parameters in
    one launch and an all-reduce of the gradients is one call. The per-parameter contract
    is unchanged: ``p.data``/``p.grad``/``p.state`` are arrays of the parameter's shape.
    Rebinding one of them (``model.to``, ``load_state_dict``, ``p.grad = ...``) detaches
    that parameter; :meth:`intact` then reports it and the owner builds a new packing.

    Parameters
    ----------
    params : sequence of Parameter
        All on one backend, with one dtype.

    Attributes
    ----------
    data, grad : array (total,)
    state : dict
        ``key -> array (total,)`` for the state kinds adopted so far, plus ``"step"``.
    """

    def __init__(self, params):
        params = list(params)
        self.params = params
        self.backend = backend = params[0].backend
        self.dtype = params[0].dtype
        self.slices = []
        total = 0
        for p in params:
            self.slices.append((total, total + p.size))
            total += p.size
        self.size = total
        self.data = backend.empty((total,), self.dtype)
        self.grad = backend.zeros((total,), self.dtype)
        self._data_views = self.views(self.data)
        self._grad_views = self.views(self.grad)
        for p, view, gview in zip(params, self._data_views, self._grad_views):
            backend.assign(view, p.data)
            if not p._grad_stale:
                backend.assign(gview, p._grad)
            p.data, p._grad = view, gview
        self.state = {}
        self._state_views = {}
        self._state_sources = {}

    @staticmethod
    def packable(params):
        """Whether ``params`` share one backend and one dtype (and there is at least one)."""
        params = list(params)
        return bool(params) and all(p.backend is params[0].backend and p.dtype == params[0].dtype
                                    for p in params)

    def views(self, buffer):
        """Each parameter's shaped view of the flat ``buffer``."""
        return [buffer[lo:hi].reshape(p.shape) for p, (lo, hi) in zip(self.params, self.slices)]

    def intact(self, params):
        """True while ``params`` are exactly the packed parameters, still viewing the buffers."""
        if len(params) != len(self.params):
            return False
        for p, q, d, g in zip(params, self.params, self._data_views, self._grad_views):
            if p is not q or p.backend is not self.backend or p.data is not d or p._grad is not g:
                return False
        return True

    def adopt_state(self, keys):
        """Pack the state arrays ``keys`` the parameters hold into flat buffers.

        Returns False (nothing changed) when some parameters hold a key and others do
        not, which the flat update cannot express.
        """
        for key in keys:
            held = [p.state.get(key) for p in self.params]
            if all(a is None for a in held):
                self.state.pop(key, None)
                continue
            if any(a is None for a in held):
                return False
            views = self._state_views.get(key)
            if (views is not None and self._state_sources.get(key) is self.state.get(key)
                    and all(a is v for a, v in zip(held, views))):
                continue
            flat = self.state[key] = self.backend.empty((self.size,), self.dtype)
            views = self._state_views[key] = self.views(flat)
            self._state_sources[key] = flat
            for p, view, value in zip(self.params, views, held):
                self.backend.assign(view, value)
                p.state[key] = view
        return True

    def share_state(self, keys):
        """Give every parameter its view of each flat state buffer in ``keys``."""
        for key in keys:
            flat = self.state.get(key)
            if flat is None:
                continue
            views = self._state_views.get(key)
            if views is None or self._state_sources.get(key) is not flat:
                views = self._state_views[key] = self.views(flat)
                self._state_sources[key] = flat
            for p, view in zip(self.params, views):
                p.state[key] = view

    def as_parameter(self):
        """A Parameter whose value, gradient and state are the flat buffers."""
        flat = Parameter.__new__(Parameter)
        flat.backend = self.backend
        flat.data = self.data
        flat._grad = self.grad
        flat._grad_stale = False
        flat.name = "flat"
        flat.state = self.state
        return flat



class FlatArrays(list):
    """A list of per-parameter arrays that are views of one flat 1-D array, ``flat``.

    Optimizers hand gradients to their hooks as this when the parameters are packed
    (:class:`FlatParameters`); a hook may then work on ``flat`` in one pass and return
    another ``FlatArrays``, and the update stays one launch. A plain list is always fine.
    """

    def __init__(self, arrays, flat):
        super().__init__(arrays)
        self.flat = flat
