"""The general matrix product of the CPU backend (fully connected layers, ``matmul``).

NumPy's BLAS on one thread for small products; large ones split their rows between threads:
Numba's, each calling BLAS from inside a kernel where NumPy's BLAS can be called so (see
``blas.py``), else the Python worker pool's.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import blas as blas_k
from .blas import gemm_at
from .jit import PARALLEL, njit
from .threads import blas_threads, pool, split


@njit(**PARALLEL)
def matmul_rows(a, trans_a, b, trans_b, ranges, out):
    """out = op(a) @ op(b) for C-contiguous 2-D ``a``, ``b`` (op transposes where asked), task
    t computing the output rows ranges[t]: the backend's large matrix products (fully
    connected layers), on Numba's threads like the convolutions."""
    m, n = out.shape
    k = a.shape[0] if trans_a else a.shape[1]
    for t in prange(ranges.shape[0]):
        r0, r1 = ranges[t, 0], ranges[t, 1]
        # rows r0:r1 of op(a): rows of a, or (transposed) its columns
        gemm_at(trans_a, trans_b, r1 - r0, n, k, a, r0 if trans_a else r0 * a.shape[1],
                 a.shape[1], b, 0, b.shape[1], 0, out, r0 * n, n)


def _base(a):
    """(C-contiguous array, transposed?) such that a == array or array.T."""
    if a.flags.c_contiguous:
        return a, False
    if a.T.flags.c_contiguous:
        return a.T, True
    return np.ascontiguousarray(a), False


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.matmul with BLAS on one thread; large products split their rows between threads:
    Numba's, calling BLAS from a kernel where it can (see matmul_rows; from 2^18
    multiply-adds, LeNet-5's fully connected layers), else the pool's (from 2^22)."""
    if a.ndim == 2 and b.ndim == 2 and a.shape[0] >= 64:
        size = a.shape[0] * a.shape[1] * b.shape[1]
        dtype = np.result_type(a, b)
        if size >= (1 << 18) and a.dtype == b.dtype == dtype and \
                dtype in (np.float32, np.float64) and blas_k.ready():
            out = np.empty((a.shape[0], b.shape[1]), dtype=dtype)
            (a0, ta), (b0, tb) = _base(a), _base(b)
            parts = min(max(1, a.shape[0] // 32), numba.get_num_threads())
            with blas_threads.single_thread():
                matmul_rows(a0, ta, b0, tb, np.array(split(a.shape[0], parts),
                                                             dtype=np.int64), out)
            return out
        if size >= (1 << 22):
            out = np.empty((a.shape[0], b.shape[1]), dtype=dtype)

            def work(lo, hi):
                np.matmul(a[lo:hi], b, out=out[lo:hi])

            pool.map(work, split(a.shape[0], pool.workers(a.shape[0] // 32)))
            return out
    with blas_threads.single_thread():
        return np.matmul(a, b)
