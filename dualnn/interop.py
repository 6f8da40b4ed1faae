"""Zero-copy exchange with other array libraries through DLPack.

:func:`from_dlpack` turns any array exposing ``__dlpack__`` (a PyTorch CPU tensor, a NumPy,
JAX or CuPy array...) into an array of a dualnn backend, sharing its memory when the two
live on the same device. The other way needs no helper: dualnn's CPU arrays are NumPy
arrays, which export ``__dlpack__`` themselves, so ``torch.from_dlpack(layer.weight.data)``
or ``torch.from_dlpack(dn.predict(model, X))`` is a view, not a copy (:func:`to_torch` is
that call with a clear error when PyTorch is missing).

:func:`dualnn.fit`, :func:`~dualnn.evaluate`, :func:`~dualnn.predict` and every backend's
``asarray`` accept such arrays directly (a PyTorch CPU tensor is read in place; on the GPU
backend a CUDA tensor becomes a CuPy array without passing through host memory).

>>> import torch                                            # doctest: +SKIP
>>> x = from_dlpack(torch.randn(8, 4))    # a NumPy view of the tensor  # doctest: +SKIP
"""

from __future__ import annotations

from .errors import ConfigurationError, ShapeError

__all__ = ["from_dlpack", "host_view", "to_torch"]


def from_dlpack(array, backend=None, dtype=None):
    """``array`` as an array of ``backend``, without a copy where possible.

    Parameters
    ----------
    array : object with ``__dlpack__``
        Any shape; e.g. a ``torch.Tensor`` on the CPU (detached: a tensor that requires
        grad must be ``.detach()``-ed first, as for any DLPack export).
    backend : Backend, optional
        Default: the backend of the current device (:func:`dualnn.get_backend`).
    dtype : {"float32", "float64", ...}, optional
        Cast to this dtype (then a copy is unavoidable); default keep the dtype.

    Returns
    -------
    array
        A view of ``array``'s memory when it lives on ``backend``'s device and no cast is
        asked for (NumPy for the CPU backend, CuPy for a GPU one); otherwise a copy placed
        on ``backend``'s device.

    Raises
    ------
    ShapeError
        ``array`` has no ``__dlpack__``.
    ConfigurationError
        The producer refused to export it (e.g. a PyTorch tensor that requires grad).
    """
    if backend is None:
        from .device import get_backend
        backend = get_backend()
    if backend.owns(array):
        return array if dtype is None else backend.asarray(array, dtype)
    if not hasattr(array, "__dlpack__"):
        raise ShapeError(f"from_dlpack: expected an object with __dlpack__ (a NumPy array, a "
                         f"PyTorch tensor, ...), got {type(array).__name__}")
    try:
        view = backend.from_dlpack(array)
    except ConfigurationError as exc:
        raise ConfigurationError(f"from_dlpack: {exc}") from None
    return view if dtype is None else backend.asarray(view, dtype)


def host_view(array, what="X"):
    """A NumPy view of a DLPack ``array`` in host memory (a copy for device memory), for
    the host-side checks and batching of :func:`dualnn.fit`, ``evaluate`` and ``predict``.

    Raises
    ------
    ShapeError
        The producer refuses the export (a tensor that requires grad, an unsupported
        dtype such as bfloat16); the message names ``what``.
    """
    import numpy as np

    try:
        return np.from_dlpack(array)
    except (BufferError, RuntimeError, TypeError, ValueError) as exc:
        first = exc
    if "grad" not in str(first):
        try:  # device memory (e.g. a CUDA tensor): one copy to the host
            return np.from_dlpack(array, device="cpu", copy=None)
        except (BufferError, RuntimeError, TypeError, ValueError):
            pass
    hint = "; pass tensor.detach()" if "grad" in str(first) else ""
    raise ShapeError(f"{what}: cannot read this {type(array).__name__} through DLPack "
                     f"({first}){hint}") from None


def to_torch(array):
    """A ``torch.Tensor`` sharing ``array``'s memory (``torch.from_dlpack``).

    Parameters
    ----------
    array : NumPy or CuPy array (any shape)
        E.g. ``layer.weight.data`` or the output of :func:`dualnn.predict`.
    """
    try:
        import torch
    except ImportError as exc:
        raise ImportError("to_torch needs PyTorch: pip install torch") from exc
    return torch.from_dlpack(array)
