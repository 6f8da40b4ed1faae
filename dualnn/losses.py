"""Loss functions: ``forward(prediction, target)`` returns the loss, ``backward()`` its gradient.

Every loss reduces with ``reduction="mean"`` by default (``"sum"`` also accepted), as the
matching PyTorch loss. ``forward`` returns a 0-d array on the model's device (``float(loss)``
reads it); ``backward()`` returns ``dL/dprediction`` for the last ``forward``.

On a GPU a loss allocates nothing per step beyond the 0-d loss it returns: its
temporaries live in reused scratch, and ``backward()``'s gradient is one array per loss
object, rewritten by each ``forward`` (read or copy it before the next one). Pass
``forward(prediction, target, out=loss_array)`` (a 0-d array of the prediction's dtype on
its device) to have the loss written into an array you keep, too.
"""

from __future__ import annotations

from .backend.base import FLOAT_DTYPES, describe_array, dtype_name
from .device import backend_of
from .errors import ConfigurationError, LabelError, ShapeError


class Loss:
    """Base class: holds the reduction and the cache between forward and backward."""

    def __init__(self, reduction="mean"):
        if reduction not in ("mean", "sum"):
            raise ConfigurationError(
                f"{type(self).__name__}: reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self._grad = None

    @property
    def name(self):
        return type(self).__name__

    def __call__(self, prediction, target, out=None):
        if out is None:  # subclasses written before out= existed keep working
            return self.forward(prediction, target)
        return self.forward(prediction, target, out=out)

    def get_config(self):
        return {"reduction": self.reduction}

    def backward(self):
        """``dL/dprediction`` of the last :meth:`forward`."""
        if self._grad is None:
            raise ShapeError(f"{self.name}: backward called before forward")
        return self._grad

    def _backend_of(self, prediction):
        return backend_of(prediction, self.name)

    def _check_prediction(self, prediction, rank=2):
        if len(prediction.shape) != rank:
            raise ShapeError(f"{self.name}: expected {rank}-D predictions, got shape "
                             f"{tuple(prediction.shape)}")
        if dtype_name(prediction.dtype) not in FLOAT_DTYPES:
            raise ShapeError(f"{self.name}: expected float predictions, got "
                             f"{dtype_name(prediction.dtype)}")

    def _float_target(self, backend, prediction, target):
        if not backend.owns(target):
            target = backend.asarray(target)
        if tuple(target.shape) != tuple(prediction.shape):
            raise ShapeError(f"{self.name}: expected targets of shape {tuple(prediction.shape)} "
                             f"(the predictions'), got {tuple(target.shape)}")
        if dtype_name(target.dtype) == dtype_name(prediction.dtype):
            return target  # only read: no copy
        return backend.xp.astype(target, prediction.dtype)

    def _scale(self, count):
        return 1.0 / count if self.reduction == "mean" else 1.0

    def _loss_out(self, backend, prediction, out):
        """``out`` checked: None, or a 0-d array of the prediction's dtype on its backend.

        Without ``out``, a training loop's slot (``_loss_slot``: a 0-d array it reads
        before the next step) when it matches, else None (a new 0-d loss).
        """
        if out is None:
            slot = self.__dict__.get("_loss_slot")
            if slot is not None and backend.owns(slot) and (
                    dtype_name(slot.dtype) == dtype_name(prediction.dtype)):
                return slot
            return None
        if not backend.owns(out) or tuple(out.shape) != () or (
                dtype_name(out.dtype) != dtype_name(prediction.dtype)):
            raise ShapeError(
                f"{self.name}: out must be a 0-d {dtype_name(prediction.dtype)} array on the "
                f"predictions' device ({backend.device}), got {describe_array(out)}")
        return out

    def _grad_buffer(self, backend, prediction):
        """The array ``dL/dprediction`` is written into on a device backend: one per loss
        object and (shape, dtype), rewritten by every forward. None on the CPU (fresh)."""
        if backend.device == "cpu" or not getattr(backend, "reuses_buffers", False):
            return None
        key = (backend, tuple(prediction.shape), dtype_name(prediction.dtype))
        kept = self.__dict__.get("_grad_kept")
        if kept is None or kept[0] != key:
            kept = self._grad_kept = (key, backend.empty(key[1], key[2]))
        return kept[1]


def _count(shape):
    count = 1
    for s in shape:
        count *= s
    return count


class MSE(Loss):
    r"""Mean squared error :math:`\frac1N \sum (y - t)^2` over all elements (no 1/2, as torch)."""

    def forward(self, prediction, target, out=None):
        backend = self._backend_of(prediction)
        target = self._float_target(backend, prediction, target)
        loss, self._grad = backend.mse(
            prediction, target, self._scale(_count(prediction.shape)),
            grad_out=self._grad_buffer(backend, prediction),
            loss_out=self._loss_out(backend, prediction, out))
        return loss


class BinaryCrossEntropy(Loss):
    r"""Binary cross-entropy on logits :math:`z` with targets :math:`t \in [0, 1]`.

    :math:`\ell = \max(z, 0) - z t + \log(1 + e^{-|z|})` (stable for any :math:`z`);
    gradient :math:`\sigma(z) - t`, divided by the number of elements for ``"mean"``. As
    ``torch.nn.BCEWithLogitsLoss``.
    """

    def forward(self, prediction, target, out=None):
        backend = self._backend_of(prediction)
        target = self._float_target(backend, prediction, target)
        loss, self._grad = backend.binary_cross_entropy(
            prediction, target, self._scale(_count(prediction.shape)),
            grad_out=self._grad_buffer(backend, prediction),
            loss_out=self._loss_out(backend, prediction, out))
        return loss


def _check_labels(loss, backend, logits, labels):
    """Integer labels of shape (n,) within [0, classes): a clear error otherwise."""
    n, classes = logits.shape
    if not backend.owns(labels):
        labels = backend.asarray(labels)
    if tuple(labels.shape) != (n,):
        raise ShapeError(f"{loss.name}: expected integer labels of shape ({n},), one per row of "
                         f"the ({n}, {classes}) logits, got shape {tuple(labels.shape)}")
    kind = dtype_name(labels.dtype)
    if not kind.startswith(("int", "uint")):
        raise LabelError(f"{loss.name}: expected integer class labels, got dtype {kind}")
    if not n:
        return labels
    if backend.device == "cpu":
        xp = backend.xp
        low, high = backend.item(xp.min(labels)), backend.item(xp.max(labels))
        _raise_if_outside(loss, classes, low, high, "")
        return labels
    # On a device, reading the range would stall the step: the range is accumulated there
    # and read every `label_check_interval` calls (a bad label's row meanwhile has a NaN
    # loss, never an out-of-bounds read).
    state = loss.__dict__.setdefault("_label_range", {})
    entry = state.get(backend)
    if entry is None or entry[1] != classes:
        bounds = backend.zeros((2,), "int64")  # [0, 0]: 0 is a valid label
        entry = state[backend] = [bounds, classes, 0]
    backend.update_label_range(labels, entry[0])
    entry[2] += 1
    interval = loss.label_check_interval
    if interval and entry[2] >= interval:
        loss.check_pending_labels()
    return labels


def _raise_if_outside(loss, classes, low, high, when):
    if low < 0 or high >= classes:
        if when:  # the device's running range starts at 0: name the offending end only
            got = f"a label of {int(low) if low < 0 else int(high)}{when}"
        else:
            got = f"values from {int(low)} to {int(high)}"
        raise LabelError(f"{loss.name}: labels must lie in [0, {classes}) for {classes} "
                         f"classes, got {got}")


class _LabelChecks:
    """Label checks of the integer-label losses; deferred and batched on a device."""

    label_check_interval = 100
    """On a GPU, the label range is read once per this many calls (and by
    :meth:`check_pending_labels`); 1 reads every call, 0 only on request."""

    def check_pending_labels(self):
        """Read the labels' range accumulated on the device since the last read (one host
        read per device) and raise :class:`~dualnn.errors.LabelError` if one was out of range.

        On the CPU every call is checked at once and this does nothing.
        """
        state = self.__dict__.get("_label_range", {})
        for backend, entry in list(state.items()):
            bounds, classes, calls = entry
            if not calls:
                continue
            low, high = (int(v) for v in backend.to_host(bounds))
            entry[2] = 0
            if low < 0 or high >= classes:
                del state[backend]
                _raise_if_outside(self, classes, low, high,
                                  f" in one of the last {calls} call(s) (read on the device "
                                  f"once per {self.label_check_interval} calls)")


class SoftmaxCrossEntropy(_LabelChecks, Loss):
    r"""Softmax followed by cross-entropy with integer labels, fused and stable.

    :math:`\ell_i = \log \sum_k e^{z_{ik}} - z_{i y_i}`; ``backward()`` returns
    :math:`\partial L / \partial z = (\mathrm{softmax}(z) - \mathrm{onehot}(y)) / n` directly
    (for ``"mean"``), as ``torch.nn.CrossEntropyLoss``.

    Parameters
    ----------
    reduction : {"mean", "sum"}
    check_labels : bool
        Check label shape, dtype and range (default True). On the CPU every call; on a
        GPU the range is kept on the device and read once per ``label_check_interval``
        calls (or by :meth:`check_pending_labels`), so a step does not wait for it.
    """

    def __init__(self, reduction="mean", check_labels=True):
        super().__init__(reduction)
        self.check_labels = bool(check_labels)

    def forward(self, prediction, target, out=None):
        backend = self._backend_of(prediction)
        self._check_prediction(prediction)
        out = self._loss_out(backend, prediction, out)
        if self.check_labels:
            target = _check_labels(self, backend, prediction, target)
        elif not backend.owns(target):
            target = backend.asarray(target)
        if out is not None:
            loss, grad = backend.softmax_cross_entropy(prediction, target, loss_out=out)
        else:
            loss, grad = backend.softmax_cross_entropy(prediction, target)
        if self.reduction == "sum":
            n = prediction.shape[0]
            if backend.device == "cpu":  # the CPU may return NumPy scalars: new arrays
                grad = grad * n
                loss = loss * n if out is None else backend.scale_into(loss, n, out)
            else:  # both fresh, or this loss's own: scaled in place
                loss, grad = backend.scale_into(loss, n, loss), backend.scale_into(grad, n, grad)
        self._grad = grad
        return loss


class Hinge(_LabelChecks, Loss):
    r"""Multi-class hinge (SVM) loss with integer labels, as ``torch.nn.MultiMarginLoss``.

    :math:`\ell_i = \frac{1}{C} \sum_{j \ne y_i} \max(0, \Delta - z_{i y_i} + z_{ij})`,
    averaged over the batch. The classic notes' SVM loss has no :math:`1/C`; pass
    ``divide_by_classes=False`` for it.

    Parameters
    ----------
    margin : float
        :math:`\Delta`, default 1.
    divide_by_classes : bool
        Divide each row's sum by the number of classes (torch's convention, default).
    """

    def __init__(self, margin=1.0, reduction="mean", divide_by_classes=True):
        super().__init__(reduction)
        self.margin = float(margin)
        self.divide_by_classes = bool(divide_by_classes)

    def get_config(self):
        return {"reduction": self.reduction, "margin": self.margin,
                "divide_by_classes": self.divide_by_classes}

    def forward(self, prediction, target, out=None):
        backend = self._backend_of(prediction)
        self._check_prediction(prediction)
        out = self._loss_out(backend, prediction, out)
        labels = _check_labels(self, backend, prediction, target)
        n, classes = prediction.shape
        scale = self._scale(n) / (classes if self.divide_by_classes else 1)
        loss, self._grad = backend.hinge(prediction, labels, self.margin, scale,
                                         grad_out=self._grad_buffer(backend, prediction),
                                         loss_out=out)
        return loss


LOSSES = {
    "mse": MSE,
    "binary_cross_entropy": BinaryCrossEntropy,
    "bce": BinaryCrossEntropy,
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "cross_entropy": SoftmaxCrossEntropy,
    "hinge": Hinge,
}


def get(name):
    """A loss class by name (``"mse"``, ``"bce"``, ``"cross_entropy"``, ``"hinge"``)."""
    try:
        return LOSSES[str(name).lower()]
    except KeyError:
        raise ConfigurationError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}") \
            from None


__all__ = ["Loss", "MSE", "BinaryCrossEntropy", "SoftmaxCrossEntropy", "Hinge", "get"]
