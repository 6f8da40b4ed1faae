"""The double's ``cupy.cuda.cublas.gemmEx`` and ``cupy.cuda.device.get_cublas_handle``.

Real CuPy's cuBLAS bindings cannot be imported without the CUDA libraries, so the
signature is written out here from CuPy 14.2's ``cupy_backends/cuda/libs/cublas.pyx``::

    cpdef gemmEx(intptr_t handle, int transa, int transb, int m, int n, int k,
                 size_t alpha, size_t A, int Atype, int lda, size_t B, int Btype,
                 int ldb, size_t beta, size_t C, int Ctype, int ldc, int computeType,
                 int algo)

and the enum values are cuBLAS's / CUDA's own (``CUDA_R_16F = 2``, ``CUDA_R_16BF = 14``,
``CUBLAS_COMPUTE_32F = 68``...). The fake runs the column-major GEMM on the raw
addresses (a double array's ``data.ptr`` is a host address): ``C = alpha op(A) op(B) +
beta C`` with A and B widened to float32, float32 products and sums (what
``CUBLAS_COMPUTE_32F`` promises), and C stored in its type (float16 / bfloat16 rounded
to nearest even). ``alpha``/``beta`` are host pointers to float32 scalars (cuBLAS's
default pointer mode with a 32F compute type). Every call is counted in :data:`CALLS`.
"""

from __future__ import annotations

import ctypes
import inspect
import types

import numpy as np

CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUDA_R_32F, CUDA_R_16F, CUDA_R_16BF = 0, 2, 14
CUBLAS_COMPUTE_16F, CUBLAS_COMPUTE_32F = 64, 68
CUBLAS_GEMM_DEFAULT = -1

_TYPES = {CUDA_R_32F: np.float32, CUDA_R_16F: np.float16, CUDA_R_16BF: np.uint16}

CALLS = []
"""``(transa, transb, m, n, k, Atype, Btype, Ctype, computeType, beta)`` of every call."""


def _signature_stub(handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb,
                    beta, C, Ctype, ldc, computeType, algo):
    """CuPy 14.2's gemmEx parameters (all positional C ints / pointers)."""


SIGNATURE = inspect.signature(_signature_stub)


def _view(ptr, dtype, count):
    """The ``count`` elements of ``dtype`` at host address ``ptr`` (shared memory)."""
    raw = (ctypes.c_char * (count * np.dtype(dtype).itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype, count=count)


def _to_float32(values, type_code):
    if type_code == CUDA_R_16BF:
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32)


def _store(values32, type_code):
    if type_code == CUDA_R_16BF:
        bits = values32.astype(np.float32).view(np.uint32)
        rounded = bits + (((bits >> 16) & 1) + 0x7FFF)
        nan = (bits & 0x7FFFFFFF) > 0x7F800000
        return np.where(nan, (bits | 0x00400000) >> 16, rounded >> 16).astype(np.uint16)
    return values32.astype(_TYPES[type_code])


def _matrix(ptr, type_code, rows, cols, ld):
    """Column-major ``rows x cols`` matrix with leading dimension ``ld`` (a view)."""
    if ld < max(1, rows):
        raise ValueError(f"cublasGemmEx: leading dimension {ld} < rows {rows} "
                         "(CUBLAS_STATUS_INVALID_VALUE)")
    flat = _view(ptr, _TYPES[type_code], ld * (cols - 1) + rows)
    full = np.lib.stride_tricks.as_strided(
        flat, shape=(rows, cols), strides=(flat.itemsize, flat.itemsize * ld))
    return full


def gemmEx(*args, **kwargs):
    """See the module docstring."""
    try:
        bound = SIGNATURE.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"cupy.cuda.cublas.gemmEx{SIGNATURE}: {exc}") from None
    a = bound.arguments
    for name, value in a.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"cupy.cuda.cublas.gemmEx: {name} must be an int (a C int or "
                            f"pointer), got {type(value).__name__}")
    if a["computeType"] != CUBLAS_COMPUTE_32F:
        raise NotImplementedError("the double's gemmEx models CUBLAS_COMPUTE_32F only")
    for name in ("Atype", "Btype", "Ctype"):
        if a[name] not in _TYPES:
            raise ValueError(f"cublasGemmEx: unsupported {name} {a[name]}")
    m, n, k = a["m"], a["n"], a["k"]
    ta, tb = a["transa"], a["transb"]
    A = _matrix(a["A"], a["Atype"], *((k, m) if ta == CUBLAS_OP_T else (m, k)), a["lda"])
    B = _matrix(a["B"], a["Btype"], *((n, k) if tb == CUBLAS_OP_T else (k, n)), a["ldb"])
    C = _matrix(a["C"], a["Ctype"], m, n, a["ldc"])
    alpha = float(_view(a["alpha"], np.float32, 1)[0])
    beta = float(_view(a["beta"], np.float32, 1)[0])
    A32 = _to_float32(A, a["Atype"])
    B32 = _to_float32(B, a["Btype"])
    with np.errstate(all="ignore"):  # a GPU raises no floating-point warnings
        product = (A32.T if ta == CUBLAS_OP_T else A32) @ (B32.T if tb == CUBLAS_OP_T
                                                           else B32)
        result = np.float32(alpha) * product.astype(np.float32)
        if beta != 0.0:
            result = result + np.float32(beta) * _to_float32(C, a["Ctype"])
        C[...] = _store(result.astype(np.float32), a["Ctype"])
    CALLS.append((ta, tb, m, n, k, a["Atype"], a["Btype"], a["Ctype"], a["computeType"], beta))


def get_cublas_handle():
    """A handle value (cuBLAS's, per device, in CuPy's ``cupy.cuda.device``)."""
    return 1


def build_module():
    """A fresh ``cupy.cuda.cublas`` module of the double."""
    mod = types.ModuleType("cupy.cuda.cublas", __doc__)
    for name in ("CUBLAS_OP_N", "CUBLAS_OP_T", "CUBLAS_COMPUTE_16F", "CUBLAS_COMPUTE_32F",
                 "CUBLAS_GEMM_DEFAULT", "gemmEx"):
        setattr(mod, name, globals()[name])
    return mod


def attach(cuda):
    """Add ``cublas``, ``device.get_cublas_handle`` and the ``runtime`` data-type enums
    to the double's ``cupy.cuda`` module ``cuda``."""
    cuda.cublas = build_module()
    cuda.get_cublas_handle = get_cublas_handle  # cuda.device is cuda itself in the double
    for name in ("CUDA_R_32F", "CUDA_R_16F", "CUDA_R_16BF"):
        setattr(cuda.runtime, name, globals()[name])
    return cuda
