"""NumPy's own BLAS, callable from inside Numba kernels.

The im2col convolution kernels multiply their packed columns with single-precision GEMM from
inside ``prange`` tasks, so that packing, multiplying and unpacking all run on Numba's threads.
(Handing the GEMMs to Python threads instead, while Numba's OpenMP threads still spin after the
previous kernel, made those convolutions 1.7x slower inside a training step than alone.)

This module finds the CBLAS ``?gemm`` of the BLAS that NumPy itself loaded (found through
threadpoolctl) and registers its address with LLVM under a fixed name, which the kernels
declare as an external function (see :func:`gemm_at`); cached kernels resolve the name
again in each new process. Only the 64-bit-integer (ILP64) OpenBLAS interface that NumPy's
wheels ship is used; with any other BLAS :func:`ready` returns False and the convolutions
split their GEMMs across Python threads instead.
"""

from __future__ import annotations

import ctypes

import numpy as np
from numba import types

from .jit import INLINE, njit
from .threads import blas_threads

# names the kernels link against
SGEMM = "numbaconv_cblas_sgemm"
DGEMM = "numbaconv_cblas_dgemm"

# (single, double) CBLAS entry points with 64-bit integers, by the library's symbol prefix
_ILP64 = [("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_"), ("cblas_sgemm64_", "cblas_dgemm64_")]

_state = {"ready": None}


def _find():
    for lib in blas_threads._find():  # the BLAS libraries NumPy loaded, through threadpoolctl
        if lib.internal_api != "openblas":
            continue
        try:
            handle = getattr(lib, "dynlib", None) or ctypes.CDLL(lib.filepath)
        except OSError:
            continue
        for s_name, d_name in _ILP64:
            s, d = getattr(handle, s_name, None), getattr(handle, d_name, None)
            if s is not None and d is not None:
                return (ctypes.cast(s, ctypes.c_void_p).value,
                        ctypes.cast(d, ctypes.c_void_p).value)
    return None


def ready() -> bool:
    """Register NumPy's GEMMs for the kernels (once); False if none can be called directly."""
    if _state["ready"] is None:
        found = _find()
        if found is not None:
            import llvmlite.binding as llvm

            llvm.add_symbol(SGEMM, found[0])
            llvm.add_symbol(DGEMM, found[1])
        _state["ready"] = found is not None
    return _state["ready"]


# NumPy's own CBLAS ?gemm (64-bit integers), registered under these names by ready(). The
# convolution and matmul kernels inline gemm_at; their cache keys cover this file (jit.njit).
_ROW_MAJOR, _NO_TRANS, _TRANS = np.int32(101), np.int32(111), np.int32(112)
_sgemm = types.ExternalFunction(SGEMM, types.void(
    types.int32, types.int32, types.int32, types.int64, types.int64, types.int64, types.float32,
    types.intp, types.int64, types.intp, types.int64, types.float32, types.intp, types.int64))
_dgemm = types.ExternalFunction(DGEMM, types.void(
    types.int32, types.int32, types.int32, types.int64, types.int64, types.int64, types.float64,
    types.intp, types.int64, types.intp, types.int64, types.float64, types.intp, types.int64))


@njit(**INLINE)
def gemm_at(trans_a, trans_b, m, n, k, a, a_off, lda, b, b_off, ldb, beta, c, c_off, ldc):
    """c[c_off:] = op(a[a_off:]) @ op(b[b_off:]) + beta * c[c_off:], BLAS-style: row-major
    matrices given by an array, an element offset and a leading dimension."""
    size = c.itemsize
    pa, pb, pc = a.ctypes.data + a_off * size, b.ctypes.data + b_off * size, \
        c.ctypes.data + c_off * size
    ta = _TRANS if trans_a else _NO_TRANS
    tb = _TRANS if trans_b else _NO_TRANS
    if size == 4:
        _sgemm(_ROW_MAJOR, ta, tb, np.int64(m), np.int64(n), np.int64(k), np.float32(1),
               pa, np.int64(lda), pb, np.int64(ldb), np.float32(beta), pc, np.int64(ldc))
    else:
        _dgemm(_ROW_MAJOR, ta, tb, np.int64(m), np.int64(n), np.int64(k), np.float64(1),
               pa, np.int64(lda), pb, np.int64(ldb), np.float64(beta), pc, np.int64(ldc))


@njit(**INLINE)
def gemm(trans_a, trans_b, a, b, beta, c):
    """c = op(a) @ op(b) + beta * c on the calling thread, for C-contiguous 2-D arrays (op
    transposes where asked). The caller holds BLAS at one thread."""
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    gemm_at(trans_a, trans_b, m, n, k, a, 0, a.shape[1], b, 0, b.shape[1], beta, c, 0, n)
