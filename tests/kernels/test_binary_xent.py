"""BCE-on-logits terms and gradient: the reference, CPU and CUDA-simulator twins against
the formulas written out in float64, on edge logits (huge, tiny, infinite, NaN) and random
shapes; the GPU backend's BCE runs the kernel."""

from __future__ import annotations

import numpy as np
import pytest
from dualnn.kernels.binary_xent import reference as R

from .cases import CUDASIM, DTYPE_NAMES, EDGE_VALUES, SHAPES, tolerances

DEVICES = ["reference", "cpu", pytest.param("cudasim", marks=CUDASIM)]


def golden(z, t, scale):
    """The textbook forms in float64 (log-sum-exp and the two-branch sigmoid)."""
    z, t = z.astype(np.float64), t.astype(np.float64)
    with np.errstate(all="ignore"):
        terms = np.logaddexp(0.0, z) - z * t
        sigmoid = np.where(z >= 0, 1 / (1 + np.exp(-np.abs(z))),
                           np.exp(-np.abs(z)) / (1 + np.exp(-np.abs(z))))
    return terms, (sigmoid - t) * scale


def _run(device, z, t, scale, request):
    if device == "reference":
        with np.errstate(invalid="ignore"):  # inf - inf in a term: NaN, as the kernels
            return R.binary_xent_terms(np, z, t, scale)
    terms, grad = np.full_like(z, np.nan), np.full_like(z, np.nan)
    if device == "cpu":
        from dualnn.kernels import cpu as k
    else:
        k = request.getfixturevalue("tiny_grid")
    got = k.binary_xent_terms(z, t, scale, terms=terms, grad=grad)
    assert got[0] is terms and got[1] is grad
    return got


def _inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal(shape) * 4).astype(dtype)
    t = (rng.random(shape) > 0.5).astype(dtype)
    return z, t


@pytest.mark.parametrize("shape", SHAPES + [(3, 5, 2), (0, 4)], ids=str)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("device", DEVICES)
def test_terms_and_gradient_match_the_formulas(device, dtype, shape, request):
    z, t = _inputs(shape, dtype)
    scale = 1.0 / max(z.size, 1)
    terms, grad = _run(device, z, t, scale, request)
    want_terms, want_grad = golden(z, t, scale)
    rtol, atol = tolerances(dtype)
    np.testing.assert_allclose(terms, want_terms, rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=atol)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the simulator's inf - inf (NaN)
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("device", DEVICES)
def test_edge_logits_stay_finite_or_propagate_nan(device, dtype, request):
    z = np.array(EDGE_VALUES, dtype=dtype)
    z = np.concatenate([z, z])
    t = np.concatenate([np.zeros(len(EDGE_VALUES)), np.ones(len(EDGE_VALUES))]).astype(dtype)
    terms, grad = _run(device, z, t, 0.5, request)
    want_terms, want_grad = golden(z, t, 0.5)
    rtol, atol = tolerances(dtype)
    finite = np.isfinite(z)
    assert np.isfinite(grad[finite]).all()  # no logit overflows the gradient
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(terms, want_terms.astype(dtype), rtol=rtol, atol=atol)
        np.testing.assert_allclose(grad, want_grad.astype(dtype), rtol=rtol, atol=atol)


@CUDASIM
def test_cuda_launcher_checks_its_arguments(ck):
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="t has shape"):
        ck.binary_xent_terms(z, np.zeros(6), 1.0, terms=np.empty_like(z), grad=np.empty_like(z))
    with pytest.raises(TypeError, match="grad has dtype float32"):
        ck.binary_xent_terms(z, z, 1.0, terms=np.empty_like(z),
                             grad=np.empty((2, 3), np.float32))


def test_cpu_twin_checks_its_arguments():
    from dualnn.kernels import cpu

    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="expected shape"):
        cpu.binary_xent_terms(z, np.zeros(6), 1.0, terms=np.empty_like(z),
                              grad=np.empty_like(z))
