"""Every Numba-CUDA kernel compiles to PTX for real GPUs (sm_80, sm_90), no GPU needed.

Uses ``numba.cuda.compile_ptx`` with each kernel's explicit float32 and float64 signature,
and the float16 signature of the kernels that declare one (NVRTC from ``numba-cuda[cu12]``). The list comes from each family's signature
declarations (``kernels/<family>/cuda.py``), so a new kernel is covered without edits here. Also checks that float32 kernels contain no float64
arithmetic (a float literal promoting the math would run at 1/64 rate on many GPUs), and
that the 16-bit kernels contain no float64 either and widen their loads to float32 (float16:
``cvt.f32.f16``; bfloat16: a 32-bit move of ``bits << 16`` into a float register).
"""

from __future__ import annotations

import os

import pytest
from dualnn.kernels import cuda as ck  # imports no numba.cuda until used

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1":
    pytest.skip("compile_ptx needs the real CUDA target, not the simulator",
                allow_module_level=True)

cuda = pytest.importorskip("numba.cuda")


def _nvrtc_available():
    try:
        cuda.compile_ptx(lambda a: None, "void(float32[::1])", cc=(8, 0))
    except Exception as exc:  # noqa: BLE001 - missing NVRTC / CUDA toolkit wheels
        return str(exc)
    return None


_missing = _nvrtc_available()
if _missing:
    pytest.skip(f"numba-cuda cannot compile PTX here (needs numba-cuda[cu12]): {_missing}",
                allow_module_level=True)

VARIANTS = ck.kernel_variants()


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)], ids=["sm80", "sm90"])
@pytest.mark.parametrize("name,dtype,label_dtype", VARIANTS,
                         ids=["-".join(filter(None, v)) for v in VARIANTS])
def test_kernel_compiles_to_ptx(name, dtype, label_dtype, cc):
    sig = ck.signature(name, dtype, label_dtype or "int64")
    ptx, _resty = cuda.compile_ptx(ck.python_kernel(name, dtype), sig, cc=cc)
    assert f".target sm_{cc[0]}{cc[1]}" in ptx
    assert ".entry" in ptx
    if dtype in ("float32", "float16", "bfloat16"):
        assert ".f64" not in ptx, f"{name}: {dtype} kernel computes in float64"
    if dtype == "float16":
        assert "cvt.f32.f16" in ptx, f"{name}: float16 kernel does not widen to float32"
    if dtype == "bfloat16":  # uint16 bits << 16 moved into a float32 register and back
        assert "mov.b32" in ptx and ".f16" not in ptx, f"{name}: bfloat16 bit casts"


def test_every_kernel_has_both_dtypes():
    names = {v[0] for v in VARIANTS}
    declared = {name for family in ck.FAMILIES.values() for name in family.signatures}
    assert names == declared
    assert set(ck.FAMILIES) == {"activation", "batchnorm", "softmax_xent", "optim",
                                "trust_ratio", "cast", "reduce", "binary_xent"}
    for name in names:
        assert {v[1] for v in VARIANTS if v[0] == name} - {"float16", "bfloat16"} \
            == {"float32", "float64"}


def test_float16_variants_of_the_mixed_precision_kernels():
    """float16: activations, batch norm (but its float32-only merge of sums), the softmax
    rows, the column sum's partial sums (a 16-bit bias gradient); bfloat16: the same."""
    half = {v[0] for v in VARIANTS if v[1] == "float16"}
    families = ck.FAMILIES
    expected = (set(families["activation"].signatures) | set(families["batchnorm"].signatures)
                | {"softmax_cross_entropy_rows", "column_sum_partial"}) \
        - {"batchnorm_backward_sums"}
    assert half == expected
    bf16 = {v[0] for v in VARIANTS if v[1] == "bfloat16"}
    assert bf16 == expected
    assert ck.signature("activation_backward", "bfloat16").startswith("void(uint16[::1]")
    sig = ck.signature("batchnorm_forward_apply", "float16")
    assert sig.startswith("void(float16[::1], float32[:, :, ::1]")
    assert ck.signature("column_sum_partial", "bfloat16") == \
        "void(uint16[:, ::1], float32[:, ::1])"


def test_every_trust_ratio_kernel_is_listed():
    from dualnn.kernels.trust_ratio import cuda as trust_ratio

    listed = {(v[0], v[1]) for v in VARIANTS}
    for name in trust_ratio.SIGNATURES:
        assert {(name, "float32"), (name, "float64")} <= listed, name


def test_importing_kernels_does_not_import_numba_cuda():
    import subprocess
    import sys

    code = ("import sys, dualnn, dualnn.kernels.cuda, dualnn.backend.cupy_backend, "
            "tests.support.cudasim_backend; "
            "bad = [m for m in ('numba.cuda', 'cupy') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
