"""Devices, moves, dropout, fit/evaluate/predict and checkpoints on the GPU path."""

from __future__ import annotations

import numpy as np
import pytest

import dualnn as dn
from dualnn.backend.cupy_backend import CupyBackend
from dualnn.callbacks import EarlyStopping, ModelCheckpoint, StepLR
from dualnn.errors import DeviceUnavailableError
from tests.cupy_double import double
from tests.cupy_double.helpers import BATCH, OUT, data, mlp, tolerance

cupy = pytest.importorskip("cupy")


# ------------------------------------------------------------------------------ devices

def test_set_device_gpu_and_available_devices():
    assert dn.available_devices() == ["cpu", "gpu:0"]
    assert dn.set_device("gpu") == "gpu:0"
    assert dn.get_device() == "gpu:0"
    backend = dn.get_backend()
    assert isinstance(backend, CupyBackend)
    layer = dn.layers.Linear(3, 2)
    assert isinstance(layer.weight.data, cupy.ndarray)
    assert dn.set_device("cpu") == "cpu"
    assert isinstance(dn.layers.Linear(3, 2).weight.data, np.ndarray)


def test_no_gpu_reported_means_no_gpu_device():
    double.DEVICE_COUNT[0] = 0
    try:
        assert dn.available_devices() == ["cpu"]
        with pytest.raises(DeviceUnavailableError, match="no GPU"):
            dn.set_device("gpu")
    finally:
        double.DEVICE_COUNT[0] = 1


def test_model_to_gpu_and_back_keeps_values_and_optimizer_state(cpu_backend):
    x, y = data("softmax_cross_entropy")
    with dn.use_backend(cpu_backend):
        dn.seed(3)
        model = mlp()
        opt = dn.optim.Adam(model.parameters(), lr=1e-2)
        loss_fn = dn.losses.SoftmaxCrossEntropy()
        loss_fn.forward(model.forward(cpu_backend.asarray(x, "float64"), training=True), y)
        model.backward(loss_fn.backward())
        opt.step()
    before = model.state_dict()
    state_before = opt.state_dict()["state"]
    model.to("gpu")
    gpu = dn.device.backend_for("gpu")
    assert all(isinstance(p.data, cupy.ndarray) for p in model.parameters())
    assert all(isinstance(p.state["exp_avg"], cupy.ndarray) for p in model.parameters())
    with dn.use_backend(gpu):
        out_gpu = gpu.to_host(model.forward(gpu.asarray(x, "float64")))
    model.to("cpu")
    assert all(isinstance(p.data, np.ndarray) for p in model.parameters())
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])
    for index, entry in opt.state_dict()["state"].items():
        for key, value in entry.items():
            np.testing.assert_array_equal(value, state_before[index][key])
    with dn.use_backend(model.backend):
        out_cpu = model.forward(np.ascontiguousarray(x))
    np.testing.assert_allclose(out_gpu, out_cpu, **tolerance("float64"))


# ------------------------------------------------------------------------------ dropout

def test_dropout_forward_and_backward_use_the_device_mask():
    gpu = dn.device.backend_for("gpu")
    with dn.use_backend(gpu):
        dn.seed(0)
        drop = dn.layers.Dropout(0.25)
        x_host = np.random.default_rng(1).standard_normal((64, 16))
        x = gpu.asarray(x_host, "float64")
        y = drop.forward(x, training=True)
        mask = gpu.to_host(drop._mask)
        assert isinstance(y, cupy.ndarray)
        assert set(np.unique(mask)) <= {0.0, 1 / 0.75}
        assert 0.6 < (mask > 0).mean() < 0.9
        np.testing.assert_allclose(gpu.to_host(y), x_host * mask, rtol=1e-15)
        dy_host = np.random.default_rng(2).standard_normal((64, 16))
        np.testing.assert_allclose(gpu.to_host(drop.backward(gpu.asarray(dy_host))),
                                   dy_host * mask, rtol=1e-15)
        assert drop.forward(x, training=False) is x


def test_dropout_model_trains_on_gpu():
    gpu = dn.device.backend_for("gpu")
    x, y = data("softmax_cross_entropy", n=32)
    with dn.use_backend(gpu):
        dn.seed(0)
        model = mlp(dropout=0.2)
        history = dn.fit(model, dn.losses.SoftmaxCrossEntropy(),
                         dn.optim.Adam(model.parameters(), lr=2e-2), x, y, epochs=3,
                         batch_size=16, progress=False)
    assert np.isfinite(history["loss"]).all()
    assert history["loss"][-1] < history["loss"][0]


# ------------------------------------------------------------------------------ fit and co.

def _fit_run(backend, tmp_path, tag):
    x, y = data("softmax_cross_entropy", n=3 * BATCH + 3, seed=4)
    xv, yv = data("softmax_cross_entropy", n=BATCH, seed=5)
    with dn.use_backend(backend):
        dn.seed(11)
        model = mlp(batchnorm=True)
        opt = dn.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
        checkpoint = ModelCheckpoint(str(tmp_path / f"{tag}-{{epoch}}.npz"))
        stopper = EarlyStopping(monitor="val_loss", patience=1, min_delta=10.0)
        history = dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, x, y, epochs=4,
                         batch_size=BATCH, validation_data=(xv, yv),
                         callbacks=[StepLR(step_size=1, gamma=0.5), stopper, checkpoint],
                         progress=False)
        scores = dn.evaluate(model, dn.losses.SoftmaxCrossEntropy(), xv, yv, batch_size=5)
        outputs = dn.predict(model, xv, batch_size=5)
    return model, opt, history, scores, outputs, checkpoint


def test_fit_evaluate_predict_match_cpu(cpu_backend, tmp_path):
    gpu_run = _fit_run(dn.device.backend_for("gpu"), tmp_path, "gpu")
    cpu_run = _fit_run(cpu_backend, tmp_path, "cpu")
    tol = tolerance("float64")
    g_hist, c_hist = gpu_run[2], cpu_run[2]
    assert g_hist.epoch == c_hist.epoch == [1, 2]  # EarlyStopping after patience 1
    assert g_hist.stopped_early and c_hist.stopped_early
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        np.testing.assert_allclose(g_hist[key], c_hist[key], **tol, err_msg=key)
    assert g_hist["lr"] == [0.2, 0.1]
    assert gpu_run[3].keys() == cpu_run[3].keys() == {"loss", "accuracy"}
    for key in gpu_run[3]:
        assert isinstance(gpu_run[3][key], float)
        np.testing.assert_allclose(gpu_run[3][key], cpu_run[3][key], **tol)
    assert isinstance(gpu_run[4], np.ndarray) and gpu_run[4].shape == (BATCH, OUT)
    np.testing.assert_allclose(gpu_run[4], cpu_run[4], **tol)
    assert gpu_run[5].last_saved.endswith("gpu-2.npz")


def test_save_and_load_on_gpu_resume_like_cpu(cpu_backend, tmp_path):
    gpu = dn.device.backend_for("gpu")
    x, y = data("softmax_cross_entropy", n=2 * BATCH)
    results = {}
    for name, backend in (("gpu", gpu), ("cpu", cpu_backend)):
        with dn.use_backend(backend):
            dn.seed(5)
            model = mlp()
            opt = dn.optim.Adam(model.parameters(), lr=1e-2)
            loss_fn = dn.losses.SoftmaxCrossEntropy()
            dn.fit(model, loss_fn, opt, x, y, epochs=1, batch_size=BATCH, progress=False)
            path = tmp_path / f"{name}.npz"
            dn.save(path, model, opt)
            restored = dn.load(path)
            assert restored.model.backend is backend and restored.epoch == 1
            for p, q in zip(model.parameters(), restored.model.parameters()):
                np.testing.assert_array_equal(backend.to_host(p.data), backend.to_host(q.data))
                assert type(q.data) is type(p.data)
            history = dn.fit(restored.model, loss_fn, restored.optimizer, x, y, epochs=1,
                             batch_size=BATCH, progress=False)
            results[name] = (history["loss"], restored.model.state_dict(),
                             restored.optimizer.state_dict()["state"])
    np.testing.assert_allclose(results["gpu"][0], results["cpu"][0], **tolerance("float64"))
    for key, value in results["cpu"][1].items():
        np.testing.assert_allclose(results["gpu"][1][key], value, **tolerance("float64"))
    with dn.use_backend(cpu_backend):  # a GPU checkpoint loads on the CPU
        on_cpu = dn.load(tmp_path / "gpu.npz")
    assert all(isinstance(p.data, np.ndarray) for p in on_cpu.model.parameters())


def test_set_device_auto_picks_the_gpu():
    assert dn.set_device("auto") == "gpu:0"


@pytest.mark.parametrize("check_finite", [None, True])
def test_fit_stops_on_a_non_finite_loss_on_gpu(check_finite):
    from dualnn.errors import NonFiniteError

    x, y = data("mse", n=2 * BATCH)
    gpu = dn.device.backend_for("gpu")
    with dn.use_backend(gpu):
        dn.seed(0)
        model = mlp()
        opt = dn.optim.SGD(model.parameters(), lr=1e6)
        with pytest.raises(NonFiniteError) as info:
            dn.fit(model, dn.losses.MSE(), opt, x, y * 1e6, epochs=20, batch_size=BATCH,
                   progress=False, check_finite=check_finite)
    assert info.value.epoch >= 1
    if check_finite:  # stopped at the exact step, before the update: weights stay finite
        assert all(np.isfinite(gpu.to_host(p.data)).all() for p in model.parameters())


def _activation_run(backend, fuse):
    rng = np.random.default_rng(8)
    x, dy = rng.standard_normal((BATCH, 8)), rng.standard_normal((BATCH, 4))
    with dn.use_backend(backend):
        dn.seed(2)
        L = dn.layers
        model = dn.Sequential(
            L.Linear(8, 12, dtype="float64"), L.LeakyReLU(0.1),
            L.Linear(12, 12, dtype="float64"), L.ELU(0.7),
            L.Linear(12, 12, dtype="float64"), L.Sigmoid(), L.Identity(),
            L.Linear(12, 12, dtype="float64"), L.Tanh(),
            L.Linear(12, 4, dtype="float64"), L.Softmax(), fuse=fuse)
        out = model.forward(backend.asarray(x, "float64"), training=True)
        dx = model.backward(backend.asarray(dy, "float64"))
        step = L.Step().forward(backend.asarray(x, "float64"))  # inference-only layer
        return ([backend.to_host(out), backend.to_host(dx), backend.to_host(step)]
                + [backend.to_host(p.grad) for p in model.parameters()])


@pytest.mark.parametrize("fuse", [True, False])
def test_every_activation_layer_matches_cpu(fuse, cpu_backend):
    gpu = _activation_run(dn.device.backend_for("gpu"), fuse)
    cpu = _activation_run(cpu_backend, fuse)
    for a, b in zip(gpu, cpu):
        np.testing.assert_allclose(a, b, **tolerance("float64"))


def test_fit_and_predict_accept_device_arrays():
    gpu = dn.device.backend_for("gpu")
    x, y = data("softmax_cross_entropy", n=2 * BATCH)
    runs = []
    for on_device in (False, True):
        with dn.use_backend(gpu):
            dn.seed(9)
            model = mlp()
            opt = dn.optim.Adam(model.parameters(), lr=1e-2)
            xs, ys = (gpu.asarray(x, "float64"), gpu.asarray(y)) if on_device else (x, y)
            history = dn.fit(model, dn.losses.SoftmaxCrossEntropy(), opt, xs, ys, epochs=2,
                             batch_size=BATCH, progress=False)
            runs.append((history["loss"], dn.predict(model, xs)))
    np.testing.assert_allclose(runs[1][0], runs[0][0], **tolerance("float64"))
    assert isinstance(runs[1][1], np.ndarray)
    np.testing.assert_allclose(runs[1][1], runs[0][1], **tolerance("float64"))


def test_gradients_on_gpu_match_finite_differences():
    """Fused batch norm, activation and softmax cross-entropy kernels, float64."""
    gpu = dn.device.backend_for("gpu")
    rng = np.random.default_rng(6)
    with dn.use_backend(gpu):
        dn.seed(1)
        model = dn.Sequential(dn.layers.Linear(3, 4, bias=False, dtype="float64"),
                              dn.layers.BatchNorm(4, dtype="float64"), dn.layers.ReLU(),
                              dn.layers.Linear(4, 3, dtype="float64"), dn.layers.Tanh(),
                              dn.layers.Linear(3, 3, dtype="float64"))
        x = gpu.asarray(rng.standard_normal((5, 3)), "float64")
        target = gpu.asarray(rng.integers(0, 3, 5))
        report = dn.gradcheck(model, x, dn.losses.SoftmaxCrossEntropy(), target,
                              tolerance=1e-6)
    assert report.passed, report
