"""NumPy's own BLAS, callable from inside Numba kernels.

The im2col convolution kernels multiply their packed columns with single-precision GEMM from
inside ``prange`` tasks, so that packing, multiplying and unpacking all run on Numba's threads.
(Handing the GEMMs to Python threads instead, while Numba's OpenMP threads still spin after the
previous kernel, made those convolutions 1.7x slower inside a training step than alone.)

This module finds the CBLAS ``?gemm`` of the BLAS that NumPy itself loaded (found through
threadpoolctl) and registers its address with LLVM under a fixed name, which the kernels
declare as an external function (see ``kernels/cpu/conv.py``); cached kernels resolve the name
again in each new process. Only the 64-bit-integer (ILP64) OpenBLAS interface that NumPy's
wheels ship is used; with any other BLAS :func:`ready` returns False and the convolutions
split their GEMMs across Python threads instead.
"""

from __future__ import annotations

import ctypes

# names the kernels link against
SGEMM = "numbaconv_cblas_sgemm"
DGEMM = "numbaconv_cblas_dgemm"

# (single, double) CBLAS entry points with 64-bit integers, by the library's symbol prefix
_ILP64 = [("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_"), ("cblas_sgemm64_", "cblas_dgemm64_")]

_state = {"ready": None}


def _find():
    from .threads import blas

    for lib in blas._find():  # the BLAS libraries NumPy loaded, through threadpoolctl
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
