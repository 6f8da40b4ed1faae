"""Trust-ratio (LARS/LAMB) kernels: the reference, CPU and CUDA-simulator twins against the
update rules written out plainly in float64, from one set of cases; then several steps,
launch geometry, argument checks and the backend dispatch.
"""

from __future__ import annotations

import numpy as np
import pytest
from dualnn.kernels.trust_ratio import reference as R

from .cases import CUDASIM, DTYPE_NAMES

DEVICES = ["reference", "cpu", pytest.param("cudasim", marks=CUDASIM)]

SHAPES = [(1,), (7,), (3, 5), (2, 3, 4), (40, 15)]
"""Up to 600 elements: several blocks on the simulator, still quick there."""

EDGES = ["random", "zero-param", "zero-grad", "huge", "tiny"]

LAMB_HYPER = [
    {"step": 1, "lr": 0.01, "weight_decay": 0.0},
    {"step": 3, "lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.01},
]
LARS_HYPER = [
    {"lr": 0.5, "momentum": 0.0},
    {"lr": 0.5, "momentum": 0.9, "weight_decay": 1e-3, "trust_coefficient": 0.01,
     "eps": 1e-8},
]


SIM_SHAPES = [(1,), (3, 5), (40, 15)]
"""The simulator's subset (one Python thread per CUDA thread): fewer shapes, last hyper."""


def cases(hypers):
    """``(device, dtype, shape, edge, adapt, hyper)``: every combination on the reference and
    the CPU; on the simulator (marked ``cudasim``) :data:`SIM_SHAPES` and the last hyper."""
    out = []
    for device in ("reference", "cpu", "cudasim"):
        for dtype in DTYPE_NAMES:
            for shape in SIM_SHAPES if device == "cudasim" else SHAPES:
                for edge in EDGES:
                    for adapt in (True, False):
                        for k, hyper in enumerate(hypers):
                            if device == "cudasim" and k != len(hypers) - 1:
                                continue
                            values = (device, dtype, shape, edge, adapt, hyper)
                            case_id = "-".join([device, dtype, "x".join(map(str, shape)),
                                                edge, "adapt" if adapt else "plain", str(k)])
                            marks = [CUDASIM] if device == "cudasim" else []
                            out.append(pytest.param(*values, id=case_id, marks=marks))
    return out


# ------------------------------------------------------------ the rules, written out plainly

def golden_lamb(p, g, m, v, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0,
                adapt=True):
    p, g, m, v = (np.asarray(a, np.float64) for a in (p, g, m, v))
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g ** 2
    r = m / (1 - beta1 ** step) / (np.sqrt(v / (1 - beta2 ** step)) + eps) + weight_decay * p
    w_norm, r_norm = np.linalg.norm(p), np.linalg.norm(r)
    phi = w_norm / r_norm if adapt and w_norm > 0 and r_norm > 0 else 1.0
    return p - lr * phi * r, m, v


def golden_lars(p, g, b, *, lr, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001,
                eps=1e-8, adapt=True):
    p, g, b = (np.asarray(a, np.float64) for a in (p, g, b))
    w_norm, g_norm = np.linalg.norm(p), np.linalg.norm(g)
    local = 1.0
    if adapt and w_norm > 0 and g_norm > 0:
        local = trust_coefficient * w_norm / (g_norm + weight_decay * w_norm + eps)
    b = momentum * b + local * (g + weight_decay * p)
    return p - lr * b, b


# ------------------------------------------------------------ one calling convention per device

def scaling_arrays(hyper, dtype):
    """``hyper`` with a float ``inv_scale`` made an array (1,) of ``dtype`` (the kernels'
    convention: a loss scaler's device value)."""
    hyper = dict(hyper)
    if isinstance(hyper.get("inv_scale"), float):
        hyper["inv_scale"] = np.array([hyper["inv_scale"]], dtype)
    return hyper


def run_update(device, name, arrays, hyper):
    """Apply ``{name}_update`` in place to copies of ``arrays`` on ``device``; return them."""
    arrays = [a.copy() for a in arrays]
    hyper = scaling_arrays(hyper, arrays[0].dtype)
    if device == "reference":
        new = getattr(R, f"{name}_update")(np, *arrays, **hyper)
        out = [arrays[0], *arrays[2:]]
        for target, value in zip(out, new):
            target[...] = value
    elif device == "cpu":
        from dualnn.kernels.trust_ratio import cpu

        getattr(cpu, f"{name}_update")(*arrays, **hyper)
    else:
        from dualnn.kernels.trust_ratio import cuda

        partial_shape, ratio_shape = cuda.scratch_shapes(arrays[0].size)
        dtype = arrays[0].dtype
        getattr(cuda, f"{name}_update")(*arrays, partial=np.full(partial_shape, np.nan, dtype),
                                        ratio=np.full(ratio_shape, np.nan, dtype), **hyper)
    return [arrays[0], *arrays[2:]]


def make_inputs(shape, dtype, edge, n_state, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(shape)
    g = rng.standard_normal(shape)
    if edge == "zero-param":
        p[...] = 0
    elif edge == "zero-grad":
        g[...] = 0
    elif edge == "huge":
        p *= 1e15
        g *= 1e15
    elif edge == "tiny":
        g *= 1e-20
    state = [0.1 * rng.standard_normal(shape) for _ in range(n_state)]
    if n_state == 2:
        state[1] = np.abs(state[1])  # LAMB's second moment
    return [a.astype(dtype) for a in (p, g, *state)]


def assert_matches(got, want, dtype):
    rtol = 1e-4 if dtype == "float32" else 1e-10
    for g, w in zip(got, want):
        scale = max(float(np.max(np.abs(w), initial=0.0)), 1e-30)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("device,dtype,shape,edge,adapt,hyper", cases(LAMB_HYPER))
def test_lamb_matches_the_rule(device, dtype, shape, edge, adapt, hyper):
    arrays = make_inputs(shape, dtype, edge, 2)
    want = golden_lamb(*arrays, adapt=adapt, **hyper)
    got = run_update(device, "lamb", arrays, dict(hyper, adapt=adapt))
    assert_matches(got, want, dtype)


@pytest.mark.parametrize("device,dtype,shape,edge,adapt,hyper", cases(LARS_HYPER))
def test_lars_matches_the_rule(device, dtype, shape, edge, adapt, hyper):
    arrays = make_inputs(shape, dtype, edge, 1)
    want = golden_lars(*arrays, adapt=adapt, **hyper)
    got = run_update(device, "lars", arrays, dict(hyper, adapt=adapt))
    assert_matches(got, want, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_several_steps_follow_the_rule(device, dtype):
    rng = np.random.default_rng(5)
    shape = (6, 5)
    lamb = make_inputs(shape, dtype, "random", 2)
    lars = make_inputs(shape, dtype, "random", 1)
    lamb_want = [lamb[0], lamb[2], lamb[3]]
    lars_want = [lars[0], lars[2]]
    lamb_got, lars_got = list(lamb_want), list(lars_want)
    for step in range(1, 4):
        g = rng.standard_normal(shape).astype(dtype)
        hyper = {"step": step, "lr": 0.01, "weight_decay": 0.01}
        lamb_want = golden_lamb(lamb_want[0], g, *lamb_want[1:], **hyper)
        lamb_got = run_update(device, "lamb", [lamb_got[0], g, *lamb_got[1:]], hyper)
        lars_want = golden_lars(lars_want[0], g, lars_want[1], lr=1.0, weight_decay=0.01)
        lars_got = run_update(device, "lars", [lars_got[0], g, lars_got[1]],
                              {"lr": 1.0, "weight_decay": 0.01})
    assert_matches(lamb_got, lamb_want, dtype)
    assert_matches(lars_got, lars_want, dtype)


# ------------------------------------------------------------ reference and CPU specifics

def test_reference_keeps_values_on_device():
    # with array_api_strict the whole step runs without converting to host scalars
    xp = pytest.importorskip("array_api_strict")
    p = xp.asarray([[1.0, 2.0], [3.0, 4.0]], dtype=xp.float32)
    g = xp.asarray([[0.5, 0.5], [0.5, 0.5]], dtype=xp.float32)
    z = xp.zeros((2, 2), dtype=xp.float32)
    new_p, _, _ = R.lamb_update(xp, p, g, z, z, step=1, lr=0.1)
    new_q, _ = R.lars_update(xp, p, g, z, lr=0.1)
    assert new_p.dtype == xp.float32 and new_q.dtype == xp.float32
    want_p = golden_lamb(np.asarray(p), np.asarray(g), np.zeros((2, 2)), np.zeros((2, 2)),
                         step=1, lr=0.1)[0]
    np.testing.assert_allclose(np.asarray(new_p), want_p, rtol=1e-5)


def test_cpu_returns_the_ratio_and_one_on_zero_norms():
    from dualnn.kernels.trust_ratio import cpu

    g = np.ones(5)
    assert cpu.lars_update(np.zeros(5), g, np.zeros(5), lr=1.0) == 1.0
    assert cpu.lamb_update(np.zeros(5), g, np.zeros(5), np.zeros(5), step=1, lr=1.0) == 1.0
    p = np.full(5, 2.0)
    local = cpu.lars_update(p.copy(), g, np.zeros(5), lr=1.0, trust_coefficient=0.1, eps=0.0)
    assert local == pytest.approx(0.1 * np.linalg.norm(p) / np.linalg.norm(g))


def test_cpu_uses_the_parallel_build_for_large_parameters():
    from dualnn.kernels._numba import PARALLEL_THRESHOLD
    from dualnn.kernels.trust_ratio import cpu

    n = PARALLEL_THRESHOLD
    arrays = make_inputs((n,), "float32", "random", 1)
    want = golden_lars(*arrays, lr=0.5, weight_decay=1e-3)
    got = run_update("cpu", "lars", arrays, {"lr": 0.5, "weight_decay": 1e-3})
    assert_matches(got, want, "float32")
    assert cpu._KERNELS.get("lars_apply", n, PARALLEL_THRESHOLD) \
        is not cpu._KERNELS.get("lars_apply", 1, PARALLEL_THRESHOLD)


@pytest.mark.parametrize("bad", ["dtype", "shape", "layout", "read-only", "not-numpy"])
def test_cpu_rejects_bad_arrays(bad):
    from dualnn.kernels.trust_ratio import cpu

    p, g, b = np.ones((4, 3)), np.ones((4, 3)), np.zeros((4, 3))
    if bad == "dtype":
        g = g.astype(np.float32)
    elif bad == "shape":
        g = np.ones((3, 4))
    elif bad == "layout":
        g = np.ones((3, 4)).T
    elif bad == "read-only":
        b.setflags(write=False)
    else:
        g = [[1.0] * 3] * 4
    with pytest.raises(ValueError, match="lars_update"):
        cpu.lars_update(p, g, b, lr=1.0)


# ------------------------------------------------------------ CUDA simulator specifics

@CUDASIM
@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_cudasim_grid_stride_and_block_merge(tiny_grid, name):
    # 4 threads x 2 blocks over 35 elements: every thread loops, two partial sums merge
    n_state = 2 if name == "lamb" else 1
    arrays = make_inputs((5, 7), "float64", "random", n_state)
    hyper = {"step": 2, "lr": 0.01} if name == "lamb" else {"lr": 1.0, "weight_decay": 0.01}
    from dualnn.kernels.trust_ratio import cuda

    assert cuda.scratch_shapes(35) == ((2, 2), (1,))
    want = (golden_lamb if name == "lamb" else golden_lars)(*arrays, **hyper)
    assert_matches(run_update("cudasim", name, arrays, hyper), want, "float64")


@CUDASIM
def test_cudasim_leaves_the_ratio_in_scratch(ck):
    from dualnn.kernels.trust_ratio import cuda

    p, g, b = np.full(8, 2.0), np.ones(8), np.zeros(8)
    partial_shape, ratio_shape = cuda.scratch_shapes(8)
    partial, ratio = np.zeros(partial_shape), np.zeros(ratio_shape)
    cuda.lars_update(p, g, b, partial=partial, ratio=ratio, lr=1.0, trust_coefficient=0.1,
                     eps=0.0)
    assert ratio[0] == pytest.approx(0.1 * np.linalg.norm(np.full(8, 2.0)) / np.sqrt(8))


@CUDASIM
class TestLauncherChecks:
    def test_wrong_scratch_shape(self, ck):
        from dualnn.kernels.trust_ratio import cuda

        p = np.ones(10)
        _, ratio_shape = cuda.scratch_shapes(10)
        with pytest.raises(ValueError, match="partial"):
            cuda.lars_update(p, p.copy(), np.zeros(10), partial=np.zeros((2, 0)),
                             ratio=np.zeros(ratio_shape), lr=1.0)

    def test_mixed_dtypes(self, ck):
        from dualnn.kernels.trust_ratio import cuda

        p = np.ones(10)
        partial_shape, ratio_shape = cuda.scratch_shapes(10)
        with pytest.raises(TypeError, match="grad"):
            cuda.lamb_update(p, p.astype(np.float32), np.zeros(10), np.zeros(10),
                             partial=np.zeros(partial_shape), ratio=np.zeros(ratio_shape),
                             step=1, lr=1.0)

    def test_not_an_array(self, ck):
        from dualnn.kernels.trust_ratio import cuda

        with pytest.raises(TypeError, match="param"):
            cuda.lars_update([1.0], np.ones(1), np.ones(1), partial=np.zeros((2, 1)),
                             ratio=np.zeros(1), lr=1.0)


@CUDASIM
def test_cudasim_backend_runs_lars_and_lamb_through_the_kernels():
    import dualnn as dn
    from dualnn.parameter import Parameter
    from tests.support.cudasim_backend import CudaSimBackend

    sim, ref = CudaSimBackend(), dn.backend.NumpyBackend(fused=False)
    results = []
    for backend in (sim, ref):
        rng = np.random.default_rng(3)
        params = [Parameter(backend.store(rng.standard_normal((6, 5))), backend, name="w"),
                  Parameter(backend.store(rng.standard_normal(6)), backend, name="b")]
        for opt in (dn.optim.LAMB(params, lr=0.01), dn.optim.LARS(params, lr=1.0)):
            for _ in range(2):
                for p in params:
                    p.grad = backend.store(rng.standard_normal(p.shape))
                opt.step()
        results.append([np.array(p.data) for p in params])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------ backend dispatch

def test_numpy_backend_dispatches_to_the_kernel_only_when_it_takes_the_arrays(monkeypatch):
    from dualnn.kernels.trust_ratio import cpu

    from dualnn.backend import NumpyBackend

    calls = []
    real = cpu.lars_update
    monkeypatch.setattr(cpu, "lars_update", lambda *a, **k: calls.append(1) or real(*a, **k))
    fused = NumpyBackend(fused=True)
    p, g, b = np.ones((4, 6)), np.full((4, 6), 0.5), np.zeros((4, 6))
    want = golden_lars(p, g, b, lr=1.0)
    fused.lars_update(p, g, b, lr=1.0)
    assert calls == [1]
    assert_matches([p, b], want, "float64")
    # a strided view: the kernel cannot take it, the reference math runs, same result
    base = np.ones((4, 12))
    view = base[:, ::2]
    fused.lars_update(view, g, np.zeros((4, 6)), lr=1.0)
    assert calls == [1]
    np.testing.assert_allclose(view, want[0], rtol=1e-12)
    assert np.array_equal(base[:, 1::2], np.ones((4, 6)))


# ------------------------------------------------------------ segmented: flat buffers

LAYOUTS = {
    "one": ([37], [True]),
    "many-tiny": ([1, 2, 3, 1, 1, 2, 3, 1, 2, 1, 3, 2], [True, False] * 6),
    "zero-norm": ([9, 7, 11], [True, True, True]),
    "excluded-1d": ([20, 4, 15, 3], [True, False, True, False]),
    "odd-lengths": ([13, 0, 37, 1, 6], [True, True, False, True, True]),
}
"""``{name: (segment lengths, adapt flags)}``; with a chunk of 5 and blocks of 4 threads
no length is a multiple of the block, and most span several chunks."""

SEG_LAMB = {"step": 3, "lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6,
            "weight_decay": 0.01}
SEG_LARS = {"lr": 0.5, "momentum": 0.9, "weight_decay": 1e-3, "trust_coefficient": 0.01,
            "eps": 1e-8}


def layout_inputs(layout, dtype, n_state, seed=0):
    """``(offsets, adapt, arrays)``: flat ``[param, grad, *state]`` for ``layout``."""
    lengths, adapt = LAYOUTS[layout]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    arrays = make_inputs((int(offsets[-1]),), "float64", "random", n_state, seed=seed)
    if layout == "zero-norm":  # segment 0: w = 0; segment 1: g = 0
        arrays[0][offsets[0]:offsets[1]] = 0
        arrays[1][offsets[1]:offsets[2]] = 0
    return offsets, adapt, [a.astype(dtype) for a in arrays]


def golden_segmented(name, arrays, offsets, adapt, hyper):
    """The plain float64 rule applied to each segment alone (the per-parameter path)."""
    rule = golden_lamb if name == "lamb" else golden_lars
    outs = [np.empty(a.shape) for a in [arrays[0], *arrays[2:]]]
    for k, on in enumerate(adapt):
        lo, hi = int(offsets[k]), int(offsets[k + 1])
        seg_hyper = dict(hyper, weight_decay=hyper["weight_decay"] if on else 0.0, adapt=on)
        for out, value in zip(outs, rule(*[a[lo:hi] for a in arrays], **seg_hyper)):
            out[lo:hi] = value
    return outs


def run_segmented(device, name, arrays, offsets, adapt, hyper, found=None, chunk=5):
    """``{name}_update_segmented`` in place on copies of ``arrays``; returns
    ``[param, *state]`` (``found``, an int32 (1,) array, is updated in place)."""
    arrays = [a.copy() for a in arrays]
    hyper = scaling_arrays(hyper, arrays[0].dtype)
    extra = {} if found is None or name == "lars" else {"found_inf": found}
    if device == "reference":
        new = getattr(R, f"{name}_update_segmented")(np, *arrays, offsets=offsets,
                                                     adapt=adapt, **hyper, **extra)
        if name == "lamb":
            *new, flag = new
            if found is not None:
                found[0] = int(bool(flag))
        for target, value in zip([arrays[0], *arrays[2:]], new):
            target[...] = value
    elif device == "cpu":
        from dualnn.kernels.trust_ratio import cpu

        getattr(cpu, f"{name}_update_segmented")(*arrays, offsets=offsets, adapt=adapt,
                                                 **hyper, **extra)
    else:
        from dualnn.kernels.trust_ratio import cuda

        chunks, segments = cuda.segment_layout(offsets, adapt, chunk=chunk)
        partial_shape, ratio_shape, found_shape = cuda.segmented_scratch_shapes(chunks,
                                                                                segments)
        dtype = arrays[0].dtype
        if name == "lamb":
            extra = {"check_finite": found is not None}
        flag = np.zeros(found_shape, np.int32) if found is None else found
        getattr(cuda, f"{name}_update_segmented")(
            *arrays, chunks=chunks, segments=segments,
            partial=np.full(partial_shape, np.nan, dtype),
            ratio=np.full(ratio_shape, np.nan, dtype), found=flag, **hyper, **extra)
    return [arrays[0], *arrays[2:]]


def segmented_cases():
    out = []
    for device in ("reference", "cpu", "cudasim"):
        for dtype in DTYPE_NAMES:
            for layout in LAYOUTS:
                marks = [CUDASIM] if device == "cudasim" else []
                out.append(pytest.param(device, dtype, layout, marks=marks,
                                        id=f"{device}-{dtype}-{layout}"))
    return out


@pytest.mark.parametrize("device,dtype,layout", segmented_cases())
@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_segmented_matches_the_rule_per_segment(tiny_grid, name, device, dtype, layout):
    offsets, adapt, arrays = layout_inputs(layout, dtype, 2 if name == "lamb" else 1)
    hyper = SEG_LAMB if name == "lamb" else SEG_LARS
    want = golden_segmented(name, arrays, offsets, adapt, hyper)
    got = run_segmented(device, name, arrays, offsets, adapt, hyper)
    assert_matches(got, want, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_segmented_equals_the_per_parameter_kernels(tiny_grid, device, name):
    """float64: the segmented op equals the same device's per-parameter op on each slice."""
    offsets, adapt, arrays = layout_inputs("odd-lengths", "float64",
                                           2 if name == "lamb" else 1, seed=4)
    hyper = SEG_LAMB if name == "lamb" else SEG_LARS
    got = run_segmented(device, name, arrays, offsets, adapt, hyper)
    for k, on in enumerate(adapt):
        lo, hi = int(offsets[k]), int(offsets[k + 1])
        if lo == hi:
            continue
        seg_hyper = dict(hyper, weight_decay=hyper["weight_decay"] if on else 0.0, adapt=on)
        want = run_update(device, name, [a[lo:hi] for a in arrays], seg_hyper)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g[lo:hi], w, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_segmented_lamb_unscales_the_gradient(tiny_grid, device, dtype):
    offsets, adapt, arrays = layout_inputs("excluded-1d", dtype, 2, seed=2)
    scaled = [arrays[0], arrays[1] * arrays[1].dtype.type(1024), *arrays[2:]]
    found = np.zeros(1, np.int32)
    got = run_segmented(device, "lamb", scaled, offsets, adapt,
                        dict(SEG_LAMB, inv_scale=1 / 1024), found=found)
    assert found[0] == 0
    assert_matches(got, golden_segmented("lamb", arrays, offsets, adapt, SEG_LAMB), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("bad", ["inf", "nan", "flag-set"])
def test_segmented_lamb_skips_the_step_on_a_nonfinite_gradient(tiny_grid, device, bad):
    offsets, adapt, arrays = layout_inputs("many-tiny", "float64", 2, seed=3)
    found = np.zeros(1, np.int32)
    if bad == "flag-set":
        found[0] = 1
    else:
        arrays[1][int(offsets[5])] = np.inf if bad == "inf" else np.nan
    got = run_segmented(device, "lamb", arrays, offsets, adapt,
                        dict(SEG_LAMB, inv_scale=0.5), found=found)
    assert found[0] == 1
    for g, before in zip(got, [arrays[0], *arrays[2:]]):
        assert np.array_equal(g, before)


def test_segment_layout_cuts_segments_into_chunks():
    from dualnn.kernels.trust_ratio import cuda

    chunks, segments = cuda.segment_layout([0, 7, 7, 9], [True, False, True], chunk=3)
    assert chunks.tolist() == [[0, 3, 6, 7], [3, 6, 7, 9], [0, 0, 0, 2]]
    assert segments.tolist() == [[0, 3, 3], [3, 3, 4], [1, 0, 1]]
    assert cuda.segmented_scratch_shapes(chunks, segments) == ((3, 4), (3,), (1,))
    with pytest.raises(ValueError, match="offsets"):
        cuda.segment_layout([0, 5, 3], [True, True])
    with pytest.raises(ValueError, match="offsets"):
        cuda.segment_layout([0, 5], [True, True])


def test_cpu_segmented_rejects_offsets_that_do_not_cover_the_buffer():
    from dualnn.kernels.trust_ratio import cpu

    p = np.ones(6)
    with pytest.raises(ValueError, match="lars_update_segmented"):
        cpu.lars_update_segmented(p, p.copy(), np.zeros(6), offsets=[0, 4], adapt=[True],
                                  lr=1.0)


@CUDASIM
def test_cudasim_segmented_launch_count_does_not_grow_with_segments(tiny_grid, monkeypatch):
    from dualnn.kernels import _cuda

    launches = []
    real = _cuda._SimulatorLaunch.__getitem__

    def counting(self, config):
        launches.append(config)
        return real(self, config)

    monkeypatch.setattr(_cuda._SimulatorLaunch, "__getitem__", counting)
    counts = []
    for layout in ("one", "many-tiny"):
        offsets, adapt, arrays = layout_inputs(layout, "float64", 2)
        launches.clear()
        run_segmented("cudasim", "lamb", arrays, offsets, adapt, SEG_LAMB)
        run_segmented("cudasim", "lars", arrays[:3], offsets, adapt, SEG_LARS)
        counts.append(len(launches))
    assert counts == [6, 6]


@CUDASIM
def test_cudasim_segmented_leaves_each_ratio_in_scratch(ck):
    from dualnn.kernels.trust_ratio import cuda

    p = np.concatenate([np.full(8, 2.0), np.zeros(3), np.full(4, 1.0)])
    g = np.ones(15)
    offsets, adapt = [0, 8, 11, 15], [True, True, False]
    chunks, segments = cuda.segment_layout(offsets, adapt, chunk=3)
    partial_shape, ratio_shape, found_shape = cuda.segmented_scratch_shapes(chunks, segments)
    ratio = np.zeros(ratio_shape)
    cuda.lars_update_segmented(p, g, np.zeros(15), chunks=chunks, segments=segments,
                               partial=np.zeros(partial_shape), ratio=ratio,
                               found=np.zeros(found_shape, np.int32), lr=1.0,
                               trust_coefficient=0.1, eps=0.0)
    assert ratio[0] == pytest.approx(0.1 * np.linalg.norm(np.full(8, 2.0)) / np.sqrt(8))
    assert ratio[1] == 1.0 and ratio[2] == 1.0


@CUDASIM
def test_cudasim_segmented_launcher_checks(ck):
    from dualnn.kernels.trust_ratio import cuda

    chunks, segments = cuda.segment_layout([0, 10], [True])
    p = np.ones(10)
    partial_shape, ratio_shape, _ = cuda.segmented_scratch_shapes(chunks, segments)
    scratch = {"partial": np.zeros(partial_shape), "ratio": np.zeros(ratio_shape)}
    with pytest.raises(ValueError, match="found"):
        cuda.lars_update_segmented(p, p.copy(), np.zeros(10), chunks=chunks,
                                   segments=segments, found=np.zeros(1), lr=1.0, **scratch)
    with pytest.raises(ValueError, match="chunks"):
        cuda.lars_update_segmented(p, p.copy(), np.zeros(10), chunks=chunks.astype(np.int32),
                                   segments=segments, found=np.zeros(1, np.int32), lr=1.0,
                                   **scratch)
    with pytest.raises(ValueError, match="flat"):
        cuda.lars_update_segmented(p.reshape(2, 5), p.reshape(2, 5), np.zeros((2, 5)),
                                   chunks=chunks, segments=segments,
                                   found=np.zeros(1, np.int32), lr=1.0, **scratch)


# ------------------------------------------------------------ LAMB under a loss scaler

LAMB_SCALED = {"step": 5, "lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6,
               "weight_decay": 0.01}
"""Host step 5 with 2 skipped steps: the bias corrections are those of step 3."""


def _scaler_arrays(dtype, *, scale=1024.0, found=0, skipped=2):
    return {"inv_scale": np.array([1 / scale], dtype), "found_inf": np.array([found], np.int32),
            "skipped": np.array([skipped], np.int32)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("adapt", [True, False])
def test_lamb_unscales_and_corrects_bias_at_step_minus_skipped(device, dtype, adapt):
    """``grad * 1024`` with ``inv_scale = 1/1024`` and ``skipped = 2`` at host step 5 is the
    plain rule on ``grad`` at step 3 (trust ratio and weight decay see the unscaled
    gradient)."""
    p, g, m, v = make_inputs((3, 5), dtype, "random", 2, seed=7)
    hyper = dict(LAMB_SCALED, adapt=adapt, weight_decay=0.01 if adapt else 0.0)
    scaled = g * g.dtype.type(1024)
    got = run_update(device, "lamb", [p, scaled, m, v], dict(hyper, **_scaler_arrays(dtype)))
    want = golden_lamb(p, g, m, v, **dict(hyper, step=3))
    assert_matches(got, want, dtype)
    not_at_5 = golden_lamb(p, g, m, v, **hyper)  # the test can fail: step 5 differs
    assert not np.allclose(got[0], not_at_5[0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_lamb_skips_on_the_flag_bit_identically(device, dtype):
    p, g, m, v = make_inputs((40, 15), dtype, "random", 2, seed=8)
    g[3, 4] = np.inf
    got = run_update(device, "lamb", [p, g, m, v],
                     dict(LAMB_SCALED, **_scaler_arrays(dtype, found=1)))
    for a, before in zip(got, (p, m, v)):
        assert np.array_equal(a, before)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_segmented_lamb_corrects_bias_at_step_minus_skipped(tiny_grid, device, dtype):
    offsets, adapt, arrays = layout_inputs("excluded-1d", dtype, 2, seed=5)
    scaled = [arrays[0], arrays[1] * arrays[1].dtype.type(1024), *arrays[2:]]
    found = np.zeros(1, np.int32)
    scaling = _scaler_arrays(dtype)
    del scaling["found_inf"]
    got = run_segmented(device, "lamb", scaled, offsets, adapt, dict(LAMB_SCALED, **scaling),
                        found=found)
    assert found[0] == 0
    want = golden_segmented("lamb", arrays, offsets, adapt, dict(LAMB_SCALED, step=3))
    assert_matches(got, want, dtype)
    at_5 = golden_segmented("lamb", arrays, offsets, adapt, LAMB_SCALED)
    assert not np.allclose(got[0], at_5[0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_lamb_devices_agree_with_the_reference_under_scaling(device):
    """float64, the same scaled inputs: each device equals the reference twin closely."""
    p, g, m, v = make_inputs((7,), "float64", "random", 2, seed=9)
    hyper = dict(LAMB_SCALED, **_scaler_arrays("float64", scale=8.0, skipped=1))
    want = run_update("reference", "lamb", [p, g, m, v], hyper)
    got = run_update(device, "lamb", [p, g, m, v], hyper)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
