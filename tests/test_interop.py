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
