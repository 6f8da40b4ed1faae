"""Export a dualnn model to ONNX for inference (eval mode).

>>> from dualnn.export import export_onnx                     # doctest: +SKIP
>>> export_onnx(model, "model.onnx")                          # doctest: +SKIP

Each layer becomes standard ONNX operators:

============================  ===================================================
dualnn layer                  ONNX
============================  ===================================================
``Linear``                    ``Gemm(x, W, b, transB=1)`` (``W`` stored (out, in))
``BatchNorm``                 ``BatchNormalization`` with the running statistics
``ReLU``, ``Sigmoid``,        ``Relu``, ``Sigmoid``, ``Tanh``
``Tanh``
``LeakyReLU``, ``ELU``        ``LeakyRelu``, ``Elu`` (``alpha`` attribute); in float64
                              graphs ``Where(x > 0, x, alpha * g(x))`` instead, since
                              ONNX keeps ``alpha`` as float32 and onnxruntime has no
                              float64 ``Elu``
``Softmax``                   ``Softmax(axis=1)``
``Step``                      ``Cast(GreaterOrEqual(z, 0))``: 1 where ``z >= 0``
``Identity``, ``Dropout``     ``Identity`` (dropout is off in eval mode)
``Sequential``                its layers in order (nesting allowed)
============================  ===================================================

The graph has one input ``"input"`` of shape ``("batch", features)`` and one output
``"output"``; the batch dimension is symbolic, so one file serves every batch size. The
element type is the model's dtype (float32 or float64).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from ..errors import ConfigurationError, OnnxExportError, ShapeError

__all__ = ["OnnxExportError", "export_onnx"]


def _import_onnx():
    try:
        import onnx
        from onnx import TensorProto, checker, helper, numpy_helper
    except ImportError as exc:
        raise ImportError(
            "export_onnx needs the onnx package: pip install 'dualnn[onnx]' "
            "(or pip install onnx; add onnxruntime to run the exported file)") from exc
    return onnx, TensorProto, checker, helper, numpy_helper


def _host(layer, array):
    return np.asarray(layer.backend.to_host(array))


class _Graph:
    """Collects nodes and initializers while walking the layers."""

    def __init__(self, helper, numpy_helper, dtype):
        self.helper = helper
        self.numpy_helper = numpy_helper
        self.dtype = dtype
        self.nodes = []
        self.initializers = []
        self._count = 0

    def name(self, stem):
        self._count += 1
        return f"{stem}_{self._count}"

    def constant(self, stem, array):
        name = self.name(stem)
        self.initializers.append(
            self.numpy_helper.from_array(np.ascontiguousarray(array, dtype=self.dtype), name))
        return name

    def node(self, op, inputs, stem, **attrs):
        out = self.name(stem)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out


def _leaves(model, path=""):
    """``(path, layer)`` of every non-container layer, in order."""
    from ..layers import Sequential

    if type(model) is Sequential:
        for index, child in enumerate(model.children()):
            yield from _leaves(child, f"{path}.{index}" if path else str(index))
    else:
        yield path or "model", model


def _emit(graph, layer, path, x, width, tensor_type):
    """Add ``layer``'s nodes reading tensor ``x``; returns (output name, output width)."""
    from .. import layers as L

    kind = type(layer)
    if kind is L.Linear:
        if width is not None and width != layer.in_features:
            raise ShapeError(f"export_onnx: layer {path} (Linear) expects {layer.in_features} "
                             f"inputs but the layer before it gives {width}")
        inputs = [x, graph.constant(f"layer{path}_weight", _host(layer, layer.weight.data))]
        if layer.bias is not None:
            inputs.append(graph.constant(f"layer{path}_bias", _host(layer, layer.bias.data)))
        return graph.node("Gemm", inputs, f"layer{path}_linear", transB=1), layer.out_features
    if kind is L.BatchNorm:
        inputs = [x] + [graph.constant(f"layer{path}_{field}", _host(layer, value))
                        for field, value in (("gamma", layer.gamma.data),
                                             ("beta", layer.beta.data),
                                             ("running_mean", layer.running_mean),
                                             ("running_var", layer.running_var))]
        out = graph.node("BatchNormalization", inputs, f"layer{path}_batchnorm",
                         epsilon=float(layer.eps), momentum=1.0 - float(layer.momentum))
        return out, layer.num_features
    simple = {L.ReLU: "Relu", L.Sigmoid: "Sigmoid", L.Tanh: "Tanh", L.Identity: "Identity",
              L.Dropout: "Identity"}
    if kind in simple:
        return graph.node(simple[kind], [x], f"layer{path}_{kind.__name__.lower()}"), width
    if kind in (L.LeakyReLU, L.ELU) and graph.dtype == np.float64:
        return _exact_negative_slope(graph, layer, path, x, kind is L.ELU), width
    if kind is L.LeakyReLU:
        return graph.node("LeakyRelu", [x], f"layer{path}_leakyrelu",
                          alpha=float(layer.alpha)), width
    if kind is L.ELU:
        return graph.node("Elu", [x], f"layer{path}_elu", alpha=float(layer.alpha)), width
    if kind is L.Softmax:
        return graph.node("Softmax", [x], f"layer{path}_softmax", axis=1), width
    if kind is L.Step:
        zero = graph.constant(f"layer{path}_zero", np.zeros((), dtype=graph.dtype))
        mask = graph.node("GreaterOrEqual", [x, zero], f"layer{path}_nonnegative")
        return graph.node("Cast", [mask], f"layer{path}_step", to=tensor_type), width
    raise OnnxExportError(
        f"export_onnx: layer {path} ({kind.__module__}.{kind.__qualname__}) has no ONNX "
        f"translation; exportable layers are Linear, BatchNorm, Dropout, Identity, Step, "
        f"Sigmoid, Tanh, ReLU, LeakyReLU, ELU and Softmax (in Sequential containers)")


def _exact_negative_slope(graph, layer, path, x, elu):
    """LeakyReLU / ELU from elementary ops: ``Where(x > 0, x, alpha * g(x))``.

    Used for float64 graphs: ONNX stores the ``alpha`` attribute of ``LeakyRelu``/``Elu`` as
    float32 (0.2 becomes 0.200000003), and onnxruntime has no float64 ``Elu`` kernel.
    """
    stem = f"layer{path}_{'elu' if elu else 'leakyrelu'}"
    zero = graph.constant(f"{stem}_zero", np.zeros((), dtype=graph.dtype))
    alpha = graph.constant(f"{stem}_alpha", np.asarray(layer.alpha, dtype=graph.dtype))
    negative = x
    if elu:
        one = graph.constant(f"{stem}_one", np.ones((), dtype=graph.dtype))
        negative = graph.node("Sub", [graph.node("Exp", [x], f"{stem}_exp"), one],
                              f"{stem}_expm1")
    scaled = graph.node("Mul", [negative, alpha], f"{stem}_scaled")
    positive = graph.node("Greater", [x, zero], f"{stem}_positive")
    return graph.node("Where", [positive, x, scaled], stem)


def _model_dtype(leaves, dtype):
    if dtype is not None:
        dtype = np.dtype(dtype)
    else:
        for _, layer in leaves:
            params = layer.parameters()
            if params:
                dtype = np.dtype(_host(layer, params[0].data).dtype)
                break
        else:
            dtype = np.dtype("float32")
    if dtype not in (np.dtype("float32"), np.dtype("float64")):
        raise ConfigurationError(f"export_onnx: dtype must be float32 or float64, got {dtype}")
    return dtype


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_atomically(data, path):
    """Write ``data`` to ``path`` via a temporary file in the same folder and os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".onnx-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def export_onnx(model, path, opset=17, *, input_features=None, dtype=None,
                input_name="input", output_name="output"):
    """Write ``model`` as an ONNX file computing its eval-mode forward pass.

    Parameters
    ----------
    model : Layer
        A :class:`~dualnn.layers.Sequential` (nesting allowed) or a single layer.
    path : str or os.PathLike
        Destination; written atomically (a temporary file renamed over it), so a failed
        export never leaves a half-written file.
    opset : int
        ONNX opset of the default domain, >= 13 (``Softmax(axis=1)`` semantics), default 17.
    input_features : int, optional
        Width of the input; needed only when no ``Linear`` or ``BatchNorm`` fixes it.
    dtype : {"float32", "float64"}, optional
        Element type of the graph; default the dtype of the model's parameters.
    input_name, output_name : str
        Names of the graph's input ``(batch, features)`` and output ``(batch, outputs)``.

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    OnnxExportError
        A layer (named with its position, e.g. ``"2.1"``, and class) has no translation.
    ShapeError
        Consecutive layers disagree on the width, or the input width is unknown.
    ImportError
        The onnx package is not installed (the message says what to install).
    """
    onnx, TensorProto, checker, helper, numpy_helper = _import_onnx()
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 13:
        raise ConfigurationError(f"export_onnx: opset must be an int >= 13, got {opset!r}")
    leaves = list(_leaves(model))
    np_dtype = _model_dtype(leaves, dtype)
    tensor_type = TensorProto.FLOAT if np_dtype == np.float32 else TensorProto.DOUBLE
    width = input_features
    if width is None:
        for _, layer in leaves:
            width = getattr(layer, "in_features", getattr(layer, "num_features", None))
            if width is not None:
                break
    if width is None:
        raise ShapeError("export_onnx: the input width is unknown (no Linear or BatchNorm in "
                         "the model); pass input_features=")
    graph = _Graph(helper, numpy_helper, np_dtype)
    x = input_name
    current = int(width)
    for layer_path, layer in leaves:
        x, current = _emit(graph, layer, layer_path, x, current, tensor_type)
    graph.nodes.append(helper.make_node("Identity", [x], [output_name], name="output"))
    proto = helper.make_model(
        helper.make_graph(
            graph.nodes, "dualnn_model",
            [helper.make_tensor_value_info(input_name, tensor_type, ["batch", int(width)])],
            [helper.make_tensor_value_info(output_name, tensor_type, ["batch", current])],
            initializer=graph.initializers),
        opset_imports=[helper.make_opsetid("", opset)], producer_name="dualnn",
        producer_version=_version())
    proto.ir_version = min(proto.ir_version, _max_ir_version(onnx, opset))
    checker.check_model(proto, full_check=True)
    _write_atomically(proto.SerializeToString(), os.fspath(path))
    return os.fspath(path)


def _version():
    from .. import __version__
    return __version__


def _max_ir_version(onnx, opset):
    """The IR version matching ``opset``, so older runtimes accept the file."""
    for entry in onnx.helper.VERSION_TABLE:
        if entry[2] == opset:
            return entry[1]
    return onnx.IR_VERSION
