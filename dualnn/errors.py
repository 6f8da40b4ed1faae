"""Exceptions raised by dualnn.

Every error dualnn raises on purpose derives from :class:`DualnnError`, so callers can
catch them all at once; the more specific classes also derive from the built-in
exception a Python user would expect (``ShapeError`` is a ``ValueError``).
"""

from __future__ import annotations


class DualnnError(Exception):
    """Base class of every dualnn error."""


class ShapeError(DualnnError, ValueError):
    """An array has the wrong shape, rank or dtype for the layer or function it was given to."""


class NonFiniteInputError(ShapeError):
    """Input data (X, y or validation data) holds NaN or infinite values, possibly only after
    the cast to the model's dtype (float64 ``1e300`` overflows float32 to ``inf``).

    A subclass of :class:`ShapeError` only so that code written against earlier releases,
    which raised ``ShapeError`` here, keeps catching it; dualnn itself raises ``ShapeError``
    for shapes alone."""


class LabelError(ShapeError):
    """Targets do not suit the loss: class labels out of range, or not integer labels.

    A subclass of :class:`ShapeError` for the same compatibility reason as
    :class:`NonFiniteInputError`."""


class DataFileError(DualnnError, OSError):
    """A data file (``.npy``, ``.csv``, dataset archive) is missing or cannot be read."""


class DataFileNotFoundError(DataFileError, FileNotFoundError):
    """A data file does not exist."""


class DataFileFormatError(DataFileError, ShapeError):
    """A data file was read but its contents are wrong: a missing array, a ragged CSV row,
    a non-numeric cell, a label column that mixes text and numbers.

    Also a :class:`ShapeError` (and ``ValueError``) so that code written against earlier
    releases, where :func:`~dualnn.data.files.load_data_file` raised ``ShapeError`` for
    these, keeps catching it."""


class DeviceMismatchError(DualnnError, ValueError):
    """An array lives on another device (or array library) than the model that received it."""


class DeviceUnavailableError(DualnnError, RuntimeError):
    """The requested device cannot be used here; the message says what is missing."""


class NonFiniteError(DualnnError, FloatingPointError):
    """The loss or a gradient became NaN or infinite.

    Attributes
    ----------
    epoch, step : int or None
        Where training was when it happened (1-based epoch, step within the epoch).
    layer : str or None
        Name of the first layer whose gradient was not finite, if any.
    """

    def __init__(self, message, *, epoch=None, step=None, layer=None):
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.layer = layer


class CheckpointError(DualnnError, OSError):
    """A checkpoint file is missing, truncated, corrupt or does not match the model."""


class ConfigurationError(DualnnError, ValueError):
    """An argument has a value dualnn does not accept (unknown name, out of range)."""


class OnnxExportError(ConfigurationError):
    """The model holds a layer (named in the message) that has no ONNX translation."""


__all__ = [
    "CheckpointError",
    "ConfigurationError",
    "DataFileError",
    "DataFileFormatError",
    "DataFileNotFoundError",
    "DeviceMismatchError",
    "DeviceUnavailableError",
    "DualnnError",
    "LabelError",
    "NonFiniteError",
    "NonFiniteInputError",
    "OnnxExportError",
    "ShapeError",
]


class DeviceMemoryError(DualnnError, MemoryError):
    """A training step would not fit in the device's free memory (see ``check_fits``)."""


__all__.append("DeviceMemoryError")
