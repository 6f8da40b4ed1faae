"""dualnn.interop: DLPack exchange with PyTorch CPU tensors shares memory, no copies."""

import numpy as np
import pytest

import dualnn as dn
from dualnn.errors import ConfigurationError, ShapeError
from dualnn.interop import from_dlpack, to_torch

torch = pytest.importorskip("torch")


def _address(a):
    return a.__array_interface__["data"][0]


def test_torch_tensor_becomes_numpy_view():
    tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    with dn.use_device("cpu"):
        view = from_dlpack(tensor)
    assert isinstance(view, np.ndarray) and view.shape == (3, 4) and view.dtype == np.float32
    assert _address(view) == tensor.data_ptr()
    tensor[1, 2] = -5.0  # a write on one side is seen on the other
    assert view[1, 2] == -5.0
    view[0, 0] = 42.0
    assert tensor[0, 0].item() == 42.0


def test_cast_copies_and_numpy_passes_through():
    tensor = torch.ones(2, 3, dtype=torch.float64)
    cast = from_dlpack(tensor, dtype="float32")
    assert cast.dtype == np.float32 and _address(cast) != tensor.data_ptr()
    a = np.zeros((2, 2))
    assert from_dlpack(a) is a


def test_torch_input_through_predict_matches_numpy_input():
    dn.seed(0)
    model = dn.Sequential(dn.layers.Linear(4, 3), dn.layers.Tanh())
    tensor = torch.randn(5, 4)
    np.testing.assert_array_equal(dn.predict(model, from_dlpack(tensor)),
                                  dn.predict(model, tensor.numpy().copy()))


def test_parameters_and_outputs_go_to_torch_without_copy():
    dn.seed(0)
    model = dn.Sequential(dn.layers.Linear(4, 3))
    weight = model[0].weight.data
    tensor = to_torch(weight)
    assert tensor.data_ptr() == _address(weight) and tuple(tensor.shape) == (3, 4)
    tensor.mul_(0)  # zeroing through torch zeroes the model's weight
    assert not np.any(model[0].weight.data)
    out = dn.predict(model, np.ones((2, 4), dtype=np.float32))
    via_torch = torch.from_dlpack(out)
    assert via_torch.data_ptr() == _address(out)
    np.testing.assert_array_equal(via_torch.numpy(), out)


def test_errors():
    with pytest.raises(ShapeError, match="__dlpack__"):
        from_dlpack([1.0, 2.0])
    with pytest.raises(ConfigurationError, match="detach"):
        from_dlpack(torch.ones(2, requires_grad=True))


# ---------------------------------------------------------------------------------- fit & co.

def _classifier():
    dn.seed(3)
    return dn.Sequential(dn.layers.Linear(4, 6), dn.layers.ReLU(), dn.layers.Linear(6, 3))


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(48, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5).astype(np.int64)
    return X, y


def test_fit_evaluate_predict_take_torch_tensors_like_numpy():
    X, y = _data()
    loss = dn.losses.SoftmaxCrossEntropy()
    results = []
    for to in (lambda a: a, torch.from_numpy):
        model = _classifier()
        opt = dn.optim.Adam(model.parameters(), lr=1e-2)
        history = dn.fit(model, loss, opt, to(X), to(y), epochs=3, batch_size=16,
                         progress=False, validation_data=(to(X), to(y)))
        results.append((history["loss"], history["val_loss"],
                        dn.evaluate(model, loss, to(X), to(y)), dn.predict(model, to(X)),
                        model[0].weight.data.copy()))
    (l0, v0, e0, p0, w0), (l1, v1, e1, p1, w1) = results
    assert l0 == l1 and v0 == v1 and e0 == e1
    np.testing.assert_array_equal(p0, p1)
    np.testing.assert_array_equal(w0, w1)


def test_fit_reads_a_tensor_in_place_not_a_copy(monkeypatch):
    from dualnn.training import checks

    X, _ = _data()
    tensor = torch.from_numpy(X.copy())
    seen = []
    real = checks.host_view

    def spy(model, data, what):
        view = real(model, data, what)
        seen.append((data, view))
        return view

    monkeypatch.setattr(checks, "host_view", spy)
    model = _classifier()
    dn.predict(model, tensor)
    view = next(v for d, v in seen if d is tensor)
    assert isinstance(view, np.ndarray) and _address(view) == tensor.data_ptr()


def test_backend_asarray_shares_a_tensor_and_casts_on_request():
    backend = dn.backend.NumpyBackend()
    tensor = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    same = backend.asarray(tensor)
    assert isinstance(same, np.ndarray) and _address(same) == tensor.data_ptr()
    cast = backend.asarray(tensor, "float64")
    assert cast.dtype == np.float64 and _address(cast) != tensor.data_ptr()
    np.testing.assert_array_equal(cast, same)
    strided = torch.arange(12, dtype=torch.float32).reshape(3, 4)[:, ::2]
    np.testing.assert_array_equal(backend.asarray(strided), strided.numpy())
    assert backend.asarray(strided).flags.c_contiguous
    view = backend.from_dlpack(tensor)
    assert _address(view) == tensor.data_ptr()


def test_array_api_backend_takes_tensors_too():
    xp = pytest.importorskip("array_api_strict")
    backend = dn.backend.ArrayAPIBackend(xp, name="array_api_strict")
    tensor = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    out = backend.asarray(tensor, "float32")
    assert backend.owns(out) and out.dtype == xp.float32
    np.testing.assert_array_equal(np.asarray(backend.to_host(out)), tensor.numpy())


def test_numpy_memmap_and_lists_still_work(tmp_path):
    X, _ = _data()
    np.save(tmp_path / "X.npy", X)
    model = _classifier()
    expected = dn.predict(model, X)
    np.testing.assert_array_equal(dn.predict(model, np.load(tmp_path / "X.npy",
                                                            mmap_mode="r")), expected)
    np.testing.assert_array_equal(dn.predict(model, X.tolist()), expected)
    np.testing.assert_array_equal(dn.backend.NumpyBackend().asarray(X.tolist()), X)


def test_tensor_errors_name_the_argument():
    model = _classifier()
    with pytest.raises(ShapeError, match=r"predict: X: .*detach"):
        dn.predict(model, torch.ones(2, 4, requires_grad=True))
    with pytest.raises(ShapeError, match=r"evaluate: y"):
        dn.evaluate(model, dn.losses.SoftmaxCrossEntropy(), torch.ones(2, 4),
                    torch.ones(2, requires_grad=True))
    with pytest.raises(ConfigurationError, match="detach"):
        dn.backend.NumpyBackend().asarray(torch.ones(2, requires_grad=True))


def _gpu_available():
    try:
        import cupy

        return bool(cupy.cuda.is_available())
    except Exception:  # noqa: BLE001 - any import/driver failure means no GPU
        return False


class _Producer:
    """A foreign DLPack producer (not a CuPy array) wrapping a CUDA array."""

    def __init__(self, array):
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_available(), reason="needs CuPy and a CUDA GPU")
def test_gpu_backend_imports_device_dlpack_without_host_round_trip(monkeypatch):
    import cupy

    from dualnn.backend.cupy_backend import CupyBackend

    backend = CupyBackend(0)
    source = cupy.arange(6, dtype=cupy.float32).reshape(2, 3)

    def no_host(*args, **kwargs):
        raise AssertionError("went through host memory")

    monkeypatch.setattr(np, "from_dlpack", no_host)
    same = backend.asarray(_Producer(source))
    assert isinstance(same, cupy.ndarray) and same.data.ptr == source.data.ptr
    host_tensor = torch.arange(6, dtype=torch.float32)  # CPU memory: copied to the GPU
    monkeypatch.undo()
    moved = backend.asarray(host_tensor, "float32")
    assert isinstance(moved, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(moved), host_tensor.numpy())
