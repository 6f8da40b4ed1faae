"""The :class:`Layer` base class users subclass to write their own layers.

A layer declares its parameters (trainable, with gradients) and buffers (state that is
saved but not trained, such as batch norm's running statistics), and implements
``forward`` and ``backward``. Everything else — moving between devices, listing
parameters, ``state_dict``, checkpoints — follows from those declarations.

Example
-------
>>> class Scale(Layer):
...     def __init__(self, n, dtype="float32"):
...         super().__init__(dtype=dtype)
...         self.add_parameter("s", self.backend.asarray([1.0] * n, self.dtype))
...     def forward(self, x, training=False):
...         self.x = x
...         return x * self.s.data
...     def backward(self, dy):
...         self.s.grad[...] += self.xp.sum(dy * self.x, axis=0)
...         return dy * self.s.data

A layer may also declare optional capabilities that :class:`~dualnn.layers.Sequential`
uses to save memory traffic — writing into scratch buffers the model owns, working in
place during backward, skipping the input gradient of the first layer, and fusing with
the next layer (:meth:`Layer.fuse_next`). See the "Writing a layer" page of the documentation.
"""

from __future__ import annotations

from ..backend.base import FLOAT_DTYPES, describe_array, dtype_name
from ..device import backend_for, get_backend
from ..errors import ConfigurationError, DeviceMismatchError, ShapeError
from ..parameter import Parameter

_REGISTRY = {}


def registered_layer(name):
    """The layer class registered under ``name`` (used to rebuild models from checkpoints)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown layer type {name!r}; known: {sorted(_REGISTRY)}. A custom layer must be "
            "imported before a checkpoint that uses it is loaded") from None


class Layer:
    """Base class of every layer.

    Subclasses call ``super().__init__()`` first, then declare state with
    :meth:`add_parameter` and :meth:`add_buffer`, and implement :meth:`forward` and
    :meth:`backward`. A subclass that takes constructor arguments should implement
    :meth:`get_config` returning them, so checkpoints can rebuild it.

    Optionally, a layer declares what else its ``forward``/``backward`` accept
    (:attr:`forward_options`, :attr:`backward_options`) and offers to run together with
    the next layer (:meth:`fuse_next`); :class:`~dualnn.layers.Sequential` uses only what
    is declared.

    Parameters
    ----------
    dtype : {"float32", "float64"} or None
        Dtype of the layer's parameters; ``None`` for layers without parameters (they
        follow their input's dtype).

    Attributes
    ----------
    backend : Backend
        The backend the layer was built on (the current device at construction) until
        :meth:`to` moves it.
    epochs_trained : int
        Epochs :func:`dualnn.fit` has trained this model for (0 for a new model); set by
        ``fit`` and restored by :func:`dualnn.load`.
    """

    epochs_trained = 0

    forward_options = frozenset()
    """Optional keywords :meth:`forward` accepts: a subset of ``{"out"}``.

    With ``"out"``, ``forward(x, training, out=buf)`` may be given a preallocated array of
    shape :meth:`output_shape` ``(x.shape)`` and ``x``'s dtype, and must return its output
    written into it.
    """

    backward_options = frozenset()
    """Optional keywords :meth:`backward` accepts: a subset of
    ``{"out", "overwrite", "input_grad"}``.

    - ``out``: a preallocated array shaped like the forward input, to write ``dL/dx`` into;
    - ``overwrite``: when true, ``dy`` is scratch the caller does not need again, so the
      layer may compute ``dL/dx`` in it and return it;
    - ``input_grad``: when false, only the parameter gradients are needed; the layer may
      skip ``dL/dx`` and return ``None``.

    Each keyword only permits a cheaper way to the same result.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY.setdefault(cls.__name__, cls)

    def __init__(self, dtype=None):
        if dtype is not None:
            dtype = dtype_name(dtype)
            if dtype not in FLOAT_DTYPES:
                raise ConfigurationError(
                    f"{type(self).__name__}: dtype must be one of {FLOAT_DTYPES}, got {dtype!r}")
        self.backend = get_backend()
        self._dtype = dtype
        self._parameters = {}
        self._buffers = {}

    # ------------------------------------------------------------------ declaration
    @property
    def xp(self):
        """The array namespace of the layer's backend."""
        return self.backend.xp

    @property
    def dtype(self):
        """The parameter dtype name, or ``None`` for a layer that follows its input."""
        return self._dtype

    @property
    def name(self):
        return type(self).__name__

    def add_parameter(self, name, data):
        """Declare a trainable array; it becomes ``self.<name>`` (a :class:`Parameter`)."""
        param = Parameter(data, self.backend, name=name)
        self._parameters[name] = param
        object.__setattr__(self, name, param)
        return param

    def add_buffer(self, name, data):
        """Declare saved, untrained state; it becomes ``self.<name>`` (an array)."""
        self._buffers[name] = None
        object.__setattr__(self, name, data)
        return data

    def children(self):
        """Sub-layers in order (empty for a leaf layer)."""
        return []

    # ------------------------------------------------------------------ computation
    def forward(self, x, training=False):
        """Compute the layer's output for a batch ``x`` of shape ``(batch, features)``.

        Caches what :meth:`backward` needs. ``training`` selects training behaviour
        (batch statistics, dropout).
        """
        raise NotImplementedError(f"{self.name} does not implement forward")

    def backward(self, dy):
        """Given ``dL/dy`` of the last forward's output, add parameter gradients into
        ``p.grad`` and return ``dL/dx``."""
        raise NotImplementedError(f"{self.name} does not implement backward")

    def output_shape(self, input_shape):
        """Shape of the output for an input of shape ``input_shape`` (default: the same).

        Only consulted when ``"out"`` is in :attr:`forward_options`.
        """
        return tuple(input_shape)

    def fuse_next(self, next_layer):
        """A block running this layer and ``next_layer`` together, or ``None`` (default).

        :class:`~dualnn.layers.Sequential` asks each layer this about the layer that
        follows it (unless built with ``fuse=False``). A returned :class:`~dualnn.layers.fusion.FusedBlock`
        must give the same results as running the two layers one after the other, leave
        both layers' parameters where they are, and keep both layers' state consistent.
        """

    def __call__(self, x, training=False):
        return self.forward(x, training=training)

    # ------------------------------------------------------------------ introspection
    def named_parameters(self, prefix=""):
        """``(name, Parameter)`` pairs in a stable order (declaration, then children)."""
        for name, param in self._parameters.items():
            yield prefix + name, param
        for index, child in enumerate(self.children()):
            yield from child.named_parameters(f"{prefix}{index}.")

    def parameters(self):
        """All trainable :class:`Parameter` objects, in a stable order."""
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        for name in self._buffers:
            yield prefix + name, getattr(self, name)
        for index, child in enumerate(self.children()):
            yield from child.named_buffers(f"{prefix}{index}.")

    def layers(self):
        """This layer and every sub-layer, depth first."""
        yield self
        for child in self.children():
            yield from child.layers()

    def zero_grad(self):
        """Zero the gradient of every parameter."""
        for param in self.parameters():
            param.zero_grad()

    def get_config(self):
        """Constructor arguments that rebuild this layer (JSON-serializable)."""
        return {}

    # ------------------------------------------------------------------ state
    def state_dict(self):
        """Parameters and buffers as host NumPy arrays keyed by stable names."""
        state = {name: self.backend.to_host(p.data).copy() for name, p in self.named_parameters()}
        for name, value in self._all_buffers():
            state[name] = self.backend.to_host(value).copy()
        return state

    def _all_buffers(self, prefix=""):
        for name in self._buffers:
            yield prefix + name, getattr(self, name)
        for index, child in enumerate(self.children()):
            yield from child._all_buffers(f"{prefix}{index}.")

    def _buffer_owners(self, prefix=""):
        for name in self._buffers:
            yield prefix + name, self, name
        for index, child in enumerate(self.children()):
            yield from child._buffer_owners(f"{prefix}{index}.")

    def load_state_dict(self, state):
        """Copy arrays from ``state`` into the parameters and buffers, in place.

        Every name must be present with the same shape and dtype, and no extra names may
        appear; nothing is changed unless all of them match.

        Raises
        ------
        ShapeError
            Naming the missing, unexpected or mismatched entries.
        """
        targets = {name: (p.data, None, None) for name, p in self.named_parameters()}
        for name, owner, attr in self._buffer_owners():
            targets[name] = (getattr(owner, attr), owner, attr)
        missing = sorted(set(targets) - set(state))
        extra = sorted(set(state) - set(targets))
        problems = []
        if missing:
            problems.append(f"missing {missing}")
        if extra:
            problems.append(f"unexpected {extra}")
        for name, (current, _, _) in targets.items():
            if name not in state:
                continue
            value = self.backend.to_host(state[name])
            want_shape, want_dtype = tuple(current.shape), dtype_name(current.dtype)
            if tuple(value.shape) != want_shape or value.dtype.name != want_dtype:
                problems.append(f"{name!r}: expected shape {want_shape} {want_dtype}, got "
                                f"{tuple(value.shape)} {value.dtype.name}")
        if problems:
            raise ShapeError(f"{self.name}.load_state_dict: " + "; ".join(problems))
        for name, (current, owner, attr) in targets.items():
            self.backend.assign(current, self.backend.asarray(state[name]))

    # ------------------------------------------------------------------ devices
    def to(self, device):
        """Move parameters, buffers and their optimizer state to ``device``; returns self.

        ``device`` is a device string (``"cpu"``, ``"gpu"``, ``"gpu:1"``, ``"auto"``) or a
        backend instance.
        """
        backend = backend_for(device) if isinstance(device, str) else device
        for layer in self.layers():
            layer._move_to(backend)
        return self

    def _move_to(self, backend):
        old = self.backend
        if backend is old:
            return
        for param in self._parameters.values():
            param.to(backend)
        for name in self._buffers:
            object.__setattr__(self, name, backend.asarray(old.to_host(getattr(self, name))))
        self.backend = backend
        self._clear_cache()

    def _clear_cache(self):
        """Forget arrays cached by forward (they live on the old device)."""

    # ------------------------------------------------------------------ checks
    def _check_batch(self, x):
        """``x`` is a 2-D array on this layer's device (no data is read)."""
        if not self.backend.owns(x):
            raise DeviceMismatchError(
                f"{self.name}: expected an array on {self.backend.device} "
                f"({self.backend.name}), got {describe_array(x)}; move the layer with "
                ".to(device), or call dn.fit/dn.predict/dn.evaluate, which accept host arrays")
        if len(x.shape) != 2:
            raise ShapeError(
                f"{self.name}: expected a 2-D batch (batch, features), got shape "
                f"{tuple(x.shape)}; reshape a single sample to (1, n)")

    half_input = None
    """Storage dtype name (``"float16"``, ``"uint16"`` for bfloat16 bits) a float32 layer
    also accepts: set by mixed-precision training on a GPU for layers whose kernels take
    16-bit activations (see :mod:`dualnn.training.mixed_precision`)."""

    def _check_input(self, x, features=None):
        """Shape/device/dtype checks every layer can afford (no data is read)."""
        self._check_batch(x)
        if features is not None and x.shape[1] != features:
            raise ShapeError(
                f"{self.name}: expected {features} input features, got shape {tuple(x.shape)}")
        if self._dtype is not None and dtype_name(x.dtype) not in (self._dtype,
                                                                   self.half_input):
            raise ShapeError(
                f"{self.name}: expected {self._dtype} input (the layer's dtype), got "
                f"{dtype_name(x.dtype)}")

    def _check_grad(self, dy, expected, dtype=None):
        """Check ``dy`` against ``expected`` (the forward output, or its shape).

        ``dy`` must be a floating-point array (either precision is accepted); ``dtype``,
        the dtype named in the error, defaults to the dtype of ``expected`` when it is an
        array, else the layer's dtype.
        """
        if expected is None:
            raise ShapeError(f"{self.name}: backward called before forward")
        shape = expected if isinstance(expected, tuple) else tuple(expected.shape)
        if not self.backend.owns(dy):
            raise DeviceMismatchError(
                f"{self.name}.backward: expected a gradient on {self.backend.device}, got "
                f"{describe_array(dy)}")
        if tuple(dy.shape) != shape:
            raise ShapeError(
                f"{self.name}.backward: expected a gradient of shape {shape} "
                f"(the forward output), got {tuple(dy.shape)}")
        if dtype is None:
            dtype = self._dtype if isinstance(expected, tuple) else expected.dtype
        if dtype is not None and dy.dtype == dtype:
            return
        got = dtype_name(dy.dtype)
        if got not in FLOAT_DTYPES:
            want = " or ".join(FLOAT_DTYPES) if dtype is None else dtype_name(dtype)
            raise ShapeError(
                f"{self.name}.backward: expected a {want} gradient (the forward output's "
                f"dtype), got {got}; convert it, e.g. dy.astype('{want.split()[0]}')")

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{self.name}({args})"
