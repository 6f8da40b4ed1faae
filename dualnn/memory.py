"""Model summaries and memory planning: parameter counts, bytes, and a step's peak memory.

:func:`summary` tabulates a model layer by layer; :func:`estimate_memory` predicts the
peak bytes of one training step; :func:`check_fits` raises
:class:`~dualnn.errors.DeviceMemoryError` before a step that would not fit.

What a training step holds at its peak (the backward pass), as counted here:

- parameters, their gradients and the optimizer's state (``param_dtype`` each);
- the device copy of the input batch and of its labels;
- the activations kept for backward: each layer's output, except an activation applied
  in place right after a :class:`~dualnn.layers.Linear` or a ReLU fused into a
  :class:`~dualnn.layers.BatchNorm` (they share the producing layer's buffer), plus a
  dropout layer's mask;
- the backward working set: ``dL/dx`` of every layer but the first (one ``(batch,
  in_features)`` array per :class:`~dualnn.layers.Linear`) and the loss gradient.

With mixed precision, activations and the backward working set take 2 bytes per
element. On a GPU, where they are really stored in 16 bits, the step also holds a
16-bit copy of every Linear weight, the float32 batch the 16-bit input is made from,
and the float32 model output and loss gradient of the loss (counted too).

On the NumPy backend the model's reused buffers of 4 MiB or more carry 2 MiB of
alignment padding each (huge pages), which is counted. Temporaries of a single kernel (a
GEMM's workspace, a loss's row sums) are not; expect the estimate within ~15% of measured use for batches
where activations dominate.
"""

from __future__ import annotations

import html
import numbers
import os

from .errors import ConfigurationError, DeviceMemoryError
from .precision import Precision

_STATE_ARRAYS = {"sgd": lambda o: 1 if o.momentum != 0 else 0,
                 "rmsprop": lambda o: 1 + (o.momentum > 0) + bool(o.centered)}
_FUSED_AFTER_LINEAR = ("ReLU", "LeakyReLU", "Sigmoid", "Tanh")


def state_arrays_per_parameter(optimizer):
    """How many parameter-sized state arrays ``optimizer`` keeps (0 for ``None``)."""
    if optimizer is None:
        return 0
    rule = _STATE_ARRAYS.get(type(optimizer).__name__.lower())
    if rule is not None:
        return int(rule(optimizer))
    return len(getattr(optimizer, "state_keys", ()))


def _walk(layer, prefix=""):
    children = layer.children()
    if not children:
        yield (prefix[:-1] if prefix else type(layer).__name__), layer
        return
    for i, child in enumerate(children):
        yield from _walk(child, f"{prefix}{i}.")


def _fused_in_place(leaves, model):
    """Indices (into ``leaves``) of activations that reuse the previous layer's buffer."""
    if not getattr(model, "fuse", False):
        return set()
    fused = set()
    for i in range(1, len(leaves)):
        prev, cur = type(leaves[i - 1][1]).__name__, leaves[i][1]
        kind = type(cur).__name__
        after_linear = prev == "Linear" and kind in _FUSED_AFTER_LINEAR and (
            not hasattr(cur, "fusable_after_linear") or cur.fusable_after_linear())
        if after_linear or (prev == "BatchNorm" and kind == "ReLU"):
            fused.add(i)
    return fused


def _input_features(leaves):
    for _, layer in leaves:
        for attr in ("in_features", "num_features"):
            value = getattr(layer, attr, None)
            if isinstance(value, int):
                return value
    raise ConfigurationError(
        "summary: cannot tell the model's input features (no Linear or BatchNorm layer)")


def _check_batch(batch_size, allow_none=True):
    if batch_size is None and allow_none:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ConfigurationError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


class LayerRow:
    """One row of a :class:`Summary`: a leaf layer's shapes and bytes."""

    __slots__ = (
        "activation_elements",
        "backward_elements",
        "kind",
        "name",
        "output_features",
        "parameter_bytes",
        "parameters",
        "scratch_elements",
    )

    def __init__(self, name, kind, output_features, parameters, parameter_bytes,
                 activation_elements, backward_elements, scratch_elements=()):
        self.name = name
        self.kind = kind
        self.output_features = output_features
        self.parameters = parameters
        self.parameter_bytes = parameter_bytes
        self.activation_elements = activation_elements  # per sample, kept for backward
        self.backward_elements = backward_elements  # per sample, dL/dx buffer
        self.scratch_elements = tuple(scratch_elements)  # per sample, model-owned buffers


class Summary:
    """A model's table: per layer name, output shape, parameters, bytes; totals.

    ``str(summary)`` is a text table, ``summary._repr_html_()`` an HTML one (notebooks).

    Attributes
    ----------
    rows : list of LayerRow
    batch_size : int or None
        Activation bytes are per batch of this size (per sample when ``None``).
    precision : Precision
    total_parameters, parameter_bytes, gradient_bytes, optimizer_bytes : int
    activation_bytes, input_bytes, backward_bytes : int
        For ``batch_size`` rows (1 when ``None``).
    peak_bytes : int
        :func:`estimate_memory` for that batch.
    """

    def __init__(self, rows, batch_size, precision, in_features, state_arrays,
                 activation_itemsize, aligned_scratch=False):
        self.rows = rows
        self.batch_size = batch_size
        self.precision = precision
        self.activation_itemsize = act = activation_itemsize
        b = batch_size or 1
        self.total_parameters = sum(r.parameters for r in rows)
        self.parameter_bytes = sum(r.parameter_bytes for r in rows)
        self.gradient_bytes = self.parameter_bytes
        self.optimizer_bytes = state_arrays * self.parameter_bytes
        self.input_bytes = b * (in_features * act + 8)  # features + int64 labels
        self.activation_bytes = b * act * sum(r.activation_elements for r in rows)
        self.backward_bytes = b * act * sum(r.backward_elements for r in rows)
        self.padding_bytes = 0
        if aligned_scratch:
            from .backend.allocation import ALIGN_FROM_BYTES, HUGE_PAGE_BYTES

            self.padding_bytes = HUGE_PAGE_BYTES * sum(
                1 for r in rows for e in r.scratch_elements if b * e * act >= ALIGN_FROM_BYTES)
        self.weight_copy_bytes = 0  # 16-bit weight copies (real 16-bit storage, GPU)
        self.half_storage_bytes = 0  # float32 batch, output and loss gradient (idem)
        self.peak_bytes = (self.parameter_bytes + self.gradient_bytes + self.optimizer_bytes
                           + self.input_bytes + self.activation_bytes + self.backward_bytes
                           + self.padding_bytes)

    def _table(self):
        b = self.batch_size
        batch_label = "N" if b is None else str(b)
        act_header = "activations/sample" if b is None else f"activations (batch {b})"
        head = ("layer", "type", "output shape", "parameters", "param bytes", act_header)
        body = [(r.name, r.kind, f"({batch_label}, {r.output_features})", f"{r.parameters:,}",
                 format_bytes(r.parameter_bytes),
                 format_bytes((b or 1) * r.activation_elements
                              * self.activation_itemsize)) for r in self.rows]
        totals = [
            ("parameters", f"{self.total_parameters:,} ({format_bytes(self.parameter_bytes)})"),
            ("gradients", format_bytes(self.gradient_bytes)),
            ("optimizer state", format_bytes(self.optimizer_bytes)),
            ("input batch", format_bytes(self.input_bytes)),
            ("activations kept for backward", format_bytes(self.activation_bytes)),
            ("backward working set", format_bytes(self.backward_bytes)),
            ("allocator alignment", format_bytes(self.padding_bytes)),
            *([("16-bit weight copies", format_bytes(self.weight_copy_bytes)),
               ("float32 batch, output, loss gradient",
                format_bytes(self.half_storage_bytes))] if self.weight_copy_bytes else []),
            ("estimated peak of a training step", format_bytes(self.peak_bytes)),
        ]
        return head, body, totals

    def __str__(self):
        head, body, totals = self._table()
        widths = [max(len(str(row[i])) for row in [head, *body]) for i in range(len(head))]
        line = "  ".join("-" * w for w in widths)
        fmt = lambda row: "  ".join(
            str(c).ljust(w) if i < 3 else str(c).rjust(w) for i, (c, w) in
            enumerate(zip(row, widths)))
        out = [fmt(head), line, *(fmt(r) for r in body), line]
        label_w = max(len(k) for k, _ in totals)
        out += [f"{k.ljust(label_w)}  {v}" for k, v in totals]
        out.append(f"precision: {self.precision.name}")
        return "\n".join(out)

    def __repr__(self):
        return str(self)

    def _repr_html_(self):
        head, body, totals = self._table()
        esc = html.escape
        rows = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>"
                       for r in body)
        tot = "".join(f"<tr><th colspan='5' style='text-align:left'>{esc(k)}</th>"
                      f"<td>{esc(v)}</td></tr>" for k, v in totals)
        header = "".join(f"<th>{esc(h)}</th>" for h in head)
        return (f"<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody>"
                f"<tfoot>{tot}</tfoot></table><p>precision: {esc(self.precision.name)}</p>")


def format_bytes(n):
    """``n`` bytes in binary units (``"1.5 MiB"``)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def _rows(model):
    leaves = list(_walk(model))
    fused = _fused_in_place(leaves, model)
    features = in_features = _input_features(leaves)
    rows = []
    for i, (name, layer) in enumerate(leaves):
        kind = type(layer).__name__
        out = getattr(layer, "out_features", None)
        out = features if not isinstance(out, int) else out
        count = sum(p.size for _, p in layer.named_parameters())
        pbytes = sum(p.size * p.data.dtype.itemsize for _, p in layer.named_parameters())
        kept = 0 if i in fused else out
        if kind == "Dropout":
            kept += features  # the mask
        backward = features if (kind == "Linear" and i > 0) else 0
        last = i == len(leaves) - 1
        if last:
            backward += out  # the loss gradient
        # buffers a Sequential keeps between steps (the last output and dL/dx are fresh)
        scratch = ([] if last or i in fused else [out]) + ([features] if backward and not
                                                            last else [])
        rows.append(LayerRow(name, kind, out, count, pbytes, kept, backward, scratch))
        features = out
    return rows, in_features


def summary(model, batch_size=None, precision="float32", optimizer=None):
    """A layer-by-layer :class:`Summary` of ``model``.

    Parameters
    ----------
    model : Layer
        Usually a :class:`~dualnn.Sequential`.
    batch_size : int, optional
        Activation bytes per batch of this size (per sample when omitted).
    precision : {"float32", "mixed_float16", "mixed_bfloat16"}
        ``"float32"``: everything in the model's own dtype. Mixed: activations take the
        compute dtype's bytes; parameters, gradients and optimizer state keep the
        model's dtype.
    optimizer : Optimizer, optional
        Counts its state (e.g. two arrays per parameter for Adam and LAMB).

    Returns
    -------
    Summary
    """
    precision = Precision(precision)
    batch_size = _check_batch(batch_size)
    rows, in_features = _rows(model)
    if precision.name == "float32":  # the model's own dtype (float32 or float64)
        params = model.parameters()
        act = params[0].data.dtype.itemsize if params else 4
    else:
        act = precision.compute_itemsize
    backend = getattr(model, "backend", None)
    aligned = (type(backend).__name__ == "NumpyBackend"
               and getattr(backend, "reuses_buffers", False))
    result = Summary(rows, batch_size, precision, in_features,
                     state_arrays_per_parameter(optimizer), act, aligned)
    if precision.name != "float32" and getattr(backend, "half_storage", False):
        _add_half_storage(result, model, rows, in_features)
    return result


def _add_half_storage(s, model, rows, in_features):
    """What real 16-bit storage adds on a GPU (see
    :mod:`dualnn.training.mixed_precision_gpu`): the 16-bit copy of every Linear weight,
    the float32 batch the 16-bit input is converted from, and the float32 model output
    and loss gradient the loss works on. Activations and ``dL/dx`` are already counted
    at 2 bytes."""
    b = s.batch_size or 1
    s.weight_copy_bytes = sum(
        layer.weight.size * s.activation_itemsize for _, layer in _walk(model)
        if type(layer).__name__ == "Linear")
    last = rows[-1].output_features if rows else 0
    s.half_storage_bytes = b * (in_features * 4 + 2 * last * 4)
    s.peak_bytes += s.weight_copy_bytes + s.half_storage_bytes


def estimate_memory(model, batch_size, optimizer=None, precision="float32"):
    """Peak bytes of one training step of ``model`` on ``batch_size`` rows.

    Parameters, gradients, optimizer state, the device copy of the input batch (and
    labels), the activations kept for backward and the backward working set; see the
    module docstring for what is and is not counted.

    Returns
    -------
    int
    """
    batch_size = _check_batch(batch_size, allow_none=False)
    return summary(model, batch_size, precision, optimizer).peak_bytes


def free_device_bytes(backend):
    """Bytes free for a training step on ``backend``'s device, or ``None`` if unknown.

    CPU: the kernel's ``MemAvailable`` (``/proc/meminfo``; what can be allocated without
    swapping), else ``os.sysconf`` free pages times the page size. GPU: CuPy's free device
    memory plus the bytes CuPy's memory pool holds but does not use. :func:`dualnn.fit`
    calls this through the module attribute, so tests can monkeypatch it.
    """
    if getattr(backend, "device", "cpu") == "cpu":
        return _free_host_bytes()
    try:
        import cupy

        free, _ = cupy.cuda.runtime.memGetInfo()
        pool = cupy.get_default_memory_pool()
        return int(free) + int(pool.free_bytes())
    except Exception:  # noqa: BLE001 - no usable CUDA runtime: nothing to check against
        return None


def _free_host_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(model, batch_size, optimizer, precision, free_bytes):
    """Raise :class:`~dualnn.errors.DeviceMemoryError` unless a step fits in ``free_bytes``.

    The message gives the estimate, its parts, and the largest power-of-two
    ``micro_batch_size`` that would fit (gradients accumulated over micro-batches give
    the same update as the full batch).

    Returns
    -------
    int
        The estimate, when it fits.
    """
    s = summary(model, _check_batch(batch_size, allow_none=False), precision, optimizer)
    if s.peak_bytes <= free_bytes:
        return s.peak_bytes
    fixed = s.parameter_bytes + s.gradient_bytes + s.optimizer_bytes
    per_sample = (s.peak_bytes - fixed) / batch_size
    hint = ("even one sample does not fit: the parameters, gradients and optimizer state "
            f"alone take {format_bytes(fixed)}; use a smaller model or mixed precision")
    if fixed + per_sample <= free_bytes:
        micro = 1
        while micro * 2 < batch_size and fixed + per_sample * micro * 2 <= free_bytes:
            micro *= 2
        hint = (f"use micro_batch_size={micro} (accumulate {-(-batch_size // micro)} "
                f"micro-batches per step) or a smaller batch")
    raise DeviceMemoryError(
        f"a training step with batch_size={batch_size} needs about "
        f"{format_bytes(s.peak_bytes)} ({s.peak_bytes} bytes: parameters+gradients+optimizer "
        f"{format_bytes(fixed)}, activations {format_bytes(s.activation_bytes)}, backward "
        f"{format_bytes(s.backward_bytes)}, input {format_bytes(s.input_bytes)}) but only "
        f"{format_bytes(free_bytes)} is free; {hint}")
