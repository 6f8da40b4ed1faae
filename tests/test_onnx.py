"""dualnn.export.onnx: exported graphs run in onnxruntime and match dn.predict."""

import os
import sys

import numpy as np
import pytest

import dualnn as dn
from dualnn.errors import ConfigurationError, DualnnError
from dualnn.export import OnnxExportError, export_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

L = dn.layers
ACTIVATIONS = {
    "relu": lambda: L.ReLU(),
    "leaky_relu": lambda: L.LeakyReLU(0.2),
    "elu": lambda: L.ELU(0.7),
    "sigmoid": lambda: L.Sigmoid(),
    "tanh": lambda: L.Tanh(),
    "softmax": lambda: L.Softmax(),
    "identity": lambda: L.Identity(),
    "step": lambda: L.Step(),
    "dropout": lambda: L.Dropout(0.5),
}


def _trained_batchnorm_model(dtype, activation):
    dn.seed(3)
    first, norm = L.Linear(6, 12, dtype=dtype), L.BatchNorm(12, dtype=dtype)
    last = L.Linear(12, 5, bias=False, dtype=dtype)
    model = dn.Sequential(first, norm, L.Tanh(), last)
    rng = np.random.default_rng(0)
    X = rng.normal(2.0, 3.0, size=(64, 6)).astype(dtype)
    y = rng.integers(0, 5, size=64)
    # moves the running statistics away from (0, 1) and gamma/beta away from (1, 0)
    dn.fit(model, dn.losses.SoftmaxCrossEntropy(), dn.optim.Adam(model.parameters(), lr=0.05),
           X, y, epochs=2, batch_size=16, progress=False)
    return dn.Sequential(first, norm, activation, last)  # Step cannot be trained through


def _run(path, X):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": X})[0]


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("float64", 1e-12)])
@pytest.mark.parametrize("kind", sorted(ACTIVATIONS))
def test_every_layer_kind_matches_predict(kind, dtype, tol, tmp_path):
    model = _trained_batchnorm_model(dtype, ACTIVATIONS[kind]())
    state = model[1].state_dict()
    assert not np.allclose(state["running_mean"], 0) and not np.allclose(state["running_var"], 1)
    path = export_onnx(model, tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(path), full_check=True)
    rng = np.random.default_rng(1)
    for batch in (1, 7, 64):  # one file, several batch sizes (dynamic batch dimension)
        X = rng.normal(2.0, 3.0, size=(batch, 6)).astype(dtype)
        got = _run(path, X)
        assert got.dtype == np.dtype(dtype) and got.shape == (batch, 5)
        np.testing.assert_allclose(got, dn.predict(model, X), rtol=tol, atol=tol)


def test_step_is_one_at_zero_and_nested_sequential(tmp_path):
    model = dn.Sequential(dn.Sequential(L.Linear(2, 3, bias=False)), L.Step())
    model[0][0].weight.data[...] = np.array([[1, 0], [0, 1], [-1, -1]], dtype=np.float32)
    X = np.array([[0, 0], [-1, 2], [1, -3]], dtype=np.float32)
    got = _run(export_onnx(model, tmp_path / "s.onnx"), X)
    np.testing.assert_array_equal(got, [[1, 1, 1], [0, 1, 0], [1, 0, 1]])
    np.testing.assert_array_equal(got, dn.predict(model, X))


def test_graph_has_symbolic_batch_and_expected_ops(tmp_path):
    model = dn.Sequential(L.Linear(3, 4), L.BatchNorm(4), L.ReLU(), L.Dropout(0.3),
                          L.Linear(4, 2), L.Softmax())
    proto = onnx.load(export_onnx(model, tmp_path / "g.onnx", opset=17))
    ops = [node.op_type for node in proto.graph.node]
    assert ops == ["Gemm", "BatchNormalization", "Relu", "Identity", "Gemm", "Softmax",
                   "Identity"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 3
    assert proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 2
    assert proto.opset_import[0].version == 17


class Scale(L.Layer):
    def forward(self, x, training=False):
        return 2 * x

    def backward(self, dy):
        return 2 * dy


def test_user_layer_is_named_and_nothing_written(tmp_path):
    model = dn.Sequential(L.Linear(3, 4), dn.Sequential(L.ReLU(), Scale()))
    target = tmp_path / "u.onnx"
    with pytest.raises(OnnxExportError, match=r"layer 1\.1 \(.*Scale\)") as info:
        export_onnx(model, target)
    assert isinstance(info.value, DualnnError)
    assert not target.exists() and os.listdir(tmp_path) == []


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        export_onnx(dn.Sequential(L.Linear(2, 2)), target)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["m.onnx"]


def test_missing_onnx_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'dualnn\[onnx\]'"):
        export_onnx(dn.Sequential(L.Linear(2, 2)), tmp_path / "m.onnx")


def test_activation_only_model_needs_input_features(tmp_path):
    with pytest.raises(DualnnError, match="input_features"):
        export_onnx(dn.Sequential(L.ReLU()), tmp_path / "a.onnx")
    path = export_onnx(dn.Sequential(L.Tanh()), tmp_path / "a.onnx", input_features=3)
    X = np.linspace(-2, 2, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(_run(path, X), np.tanh(X), rtol=1e-6)


def test_bad_opset_rejected(tmp_path):
    with pytest.raises(ConfigurationError, match="opset"):
        export_onnx(dn.Sequential(L.Linear(2, 2)), tmp_path / "m.onnx", opset=11)
