"""Batched matrix product with shared-memory tiles: C[b] = A[b] @ B[b].

Operands are read through (batch, row, column) strides, so a transposed or batch-broadcast
operand needs no copy. Each block computes a TILE x TILE tile of C, stepping along K one tile
at a time through shared memory.
"""

from __future__ import annotations

from functools import cache

import numba
import numpy as np
from numba import cuda

TILE = 8 if cuda.config.ENABLE_CUDASIM else 16  # the simulator runs each thread in Python


@cache
def kernels(dtype):
    T = numba.from_dtype(np.dtype(dtype))
    zero = T(0)

    @cuda.jit
    def matmul(a, a_strides, b, b_strides, m, n, k, out):
        """out (batch, m, n) contiguous; a_strides / b_strides = (batch, row, col) in elements
        over the flat arrays a and b. Blocks stride over the output tiles, so a small grid
        covers any size (the simulator runs two blocks)."""
        sa = cuda.shared.array((TILE, TILE), T)
        sb = cuda.shared.array((TILE, TILE), T)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        batch = cuda.blockIdx.z
        a0 = batch * a_strides[0]
        b0 = batch * b_strides[0]
        for by in range(cuda.blockIdx.y, (m + TILE - 1) // TILE, cuda.gridDim.y):
            for bx in range(cuda.blockIdx.x, (n + TILE - 1) // TILE, cuda.gridDim.x):
                row = by * TILE + ty
                col = bx * TILE + tx
                acc = zero
                for t0 in range(0, k, TILE):
                    ka = t0 + tx
                    kb = t0 + ty
                    sa[ty, tx] = a[a0 + row * a_strides[1] + ka * a_strides[2]] if (
                        row < m and ka < k) else zero
                    sb[ty, tx] = b[b0 + kb * b_strides[1] + col * b_strides[2]] if (
                        kb < k and col < n) else zero
                    cuda.syncthreads()
                    for j in range(TILE):
                        acc += sa[ty, j] * sb[j, tx]
                    cuda.syncthreads()
                if row < m and col < n:
                    out[batch, row, col] = acc

    return matmul
