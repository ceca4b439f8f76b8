"""Reductions over the last axis of a (rows, K) array: one block per row, a strided pass per
thread, then a tree in shared memory. Softmax reuses the same pattern (the NLL rows of the
losses are in loss.py). Every
other reduction is a permutation (a gather) followed by these.

Where there are fewer rows than it takes to fill the GPU and the rows are long (a full ``sum``,
a bias gradient, a convolution's per-channel sums), one block per row would leave most SMs idle:
:func:`row_reduce` and :func:`channel_sums` then cut each row into chunks on a 2-D grid, each
block writing one partial, and a second launch combines each row's partials in chunk order.
Fixed chunks and a fixed order: the same bits every run, without atomics.
"""

from __future__ import annotations

import math
from functools import cache
from types import SimpleNamespace

import numba
import numpy as np
from numba import cuda

# threads per row block (a power of two); the simulator runs each thread in Python, so it gets
# a small block to keep tests fast
BLOCK = 32 if cuda.config.ENABLE_CUDASIM else 128


@cuda.jit(device=True, inline=True)
def _block_sum(buf, t):
    """Sum buf[0:BLOCK] into buf[0] with a tree over the block's threads (all must call)."""
    cuda.syncthreads()
    s = BLOCK // 2
    while s > 0:
        if t < s:
            buf[t] += buf[t + s]
        cuda.syncthreads()
        s //= 2


@cache
def kernels(dtype) -> SimpleNamespace:
    T = numba.from_dtype(np.dtype(dtype))
    zero = T(0)
    ninf, pinf = T(-math.inf), T(math.inf)

    def row_reduce(combine, init):
        @cuda.jit
        def k(x, out):
            t = cuda.threadIdx.x
            buf = cuda.shared.array(BLOCK, T)
            n = x.shape[1]
            for r in range(cuda.blockIdx.x, x.shape[0], cuda.gridDim.x):
                acc = init
                for j in range(t, n, BLOCK):
                    acc = combine(acc, x[r, j])
                buf[t] = acc
                cuda.syncthreads()
                s = BLOCK // 2
                while s > 0:
                    if t < s:
                        buf[t] = combine(buf[t], buf[t + s])
                    cuda.syncthreads()
                    s //= 2
                if t == 0:
                    out[r] = buf[0]
                cuda.syncthreads()
        return k

    dev = cuda.jit(device=True, inline=True)
    ns = SimpleNamespace()
    ns.sum = row_reduce(dev(lambda a, b: a + b), zero)
    ns.max = row_reduce(dev(lambda a, b: a if (a > b or a != a) else b), ninf)
    ns.min = row_reduce(dev(lambda a, b: a if (a < b or a != a) else b), pinf)

    def row_arg(strictly_better):
        @cuda.jit(device=True, inline=True)
        def wins(v, j, w, i):
            """Does (value v, index j) replace (w, i)? NaN beats numbers; ties go to the
            smaller index (NumPy's and PyTorch's first extremum)."""
            vn = v != v
            wn = w != w
            if vn and wn:
                return j < i
            if vn or wn:
                return vn
            return strictly_better(v, w) or (v == w and j < i)

        @cuda.jit
        def k(x, out):
            r = cuda.blockIdx.x
            t = cuda.threadIdx.x
            val = cuda.shared.array(BLOCK, T)
            idx = cuda.shared.array(BLOCK, numba.int64)
            n = x.shape[1]
            best = x[r, 0]
            bi = 0
            for j in range(t, n, BLOCK):
                if wins(x[r, j], j, best, bi):
                    best, bi = x[r, j], j
            val[t] = best
            idx[t] = bi
            cuda.syncthreads()
            s = BLOCK // 2
            while s > 0:
                if t < s and wins(val[t + s], idx[t + s], val[t], idx[t]):
                    val[t], idx[t] = val[t + s], idx[t + s]
                cuda.syncthreads()
                s //= 2
            if t == 0:
                out[r] = idx[0]
        return k

    ns.argmax = row_arg(dev(lambda v, w: v > w))
    ns.argmin = row_arg(dev(lambda v, w: v < w))

    @cuda.jit
    def softmax_rows(x, out, log):
        r = cuda.blockIdx.x
        t = cuda.threadIdx.x
        buf = cuda.shared.array(BLOCK, T)
        n = x.shape[1]
        m = ninf
        for j in range(t, n, BLOCK):
            v = x[r, j]
            if v > m or v != v:
                m = v
        buf[t] = m
        cuda.syncthreads()
        s = BLOCK // 2
        while s > 0:
            if t < s and (buf[t + s] > buf[t] or buf[t + s] != buf[t + s]):
                buf[t] = buf[t + s]
            cuda.syncthreads()
            s //= 2
        m = buf[0]
        if m == ninf:
            m = zero
        cuda.syncthreads()
        acc = zero
        for j in range(t, n, BLOCK):
            acc += math.exp(x[r, j] - m)
        buf[t] = acc
        _block_sum(buf, t)
        total = buf[0]
        for j in range(t, n, BLOCK):
            if log:
                out[r, j] = x[r, j] - m - math.log(total)
            else:
                out[r, j] = math.exp(x[r, j] - m) / total

    @cuda.jit
    def softmax_rows_backward(gy, y, out, log):
        r = cuda.blockIdx.x
        t = cuda.threadIdx.x
        buf = cuda.shared.array(BLOCK, T)
        n = gy.shape[1]
        acc = zero
        for j in range(t, n, BLOCK):
            acc += gy[r, j] if log else gy[r, j] * y[r, j]
        buf[t] = acc
        _block_sum(buf, t)
        total = buf[0]
        for j in range(t, n, BLOCK):
            if log:
                out[r, j] = gy[r, j] - math.exp(y[r, j]) * total
            else:
                out[r, j] = y[r, j] * (gy[r, j] - total)

    def row_partial(combine, init):
        @cuda.jit
        def k(x, chunk, part):
            """part[r, b] = combine of x[r, b*chunk:(b+1)*chunk]: grid (chunks, rows)."""
            b = cuda.blockIdx.x
            t = cuda.threadIdx.x
            buf = cuda.shared.array(BLOCK, T)
            for r in range(cuda.blockIdx.y, x.shape[0], cuda.gridDim.y):
                acc = init
                for j in range(b * chunk + t, min((b + 1) * chunk, x.shape[1]), BLOCK):
                    acc = combine(acc, x[r, j])
                buf[t] = acc
                cuda.syncthreads()
                s = BLOCK // 2
                while s > 0:
                    if t < s:
                        buf[t] = combine(buf[t], buf[t + s])
                    cuda.syncthreads()
                    s //= 2
                if t == 0:
                    part[r, b] = buf[0]
                cuda.syncthreads()
        return k

    ns.partial = {
        "sum": row_partial(dev(lambda a, b: a + b), zero),
        "max": row_partial(dev(lambda a, b: a if (a > b or a != a) else b), ninf),
        "min": row_partial(dev(lambda a, b: a if (a < b or a != a) else b), pinf)}

    @cuda.jit
    def channel_partial(x, chunk, part):
        """part[c, b] = sum of x[n, c, p] over the b-th chunk of the flattened (n, p) of an
        (N, C, L) array: grid (chunks, C)."""
        b = cuda.blockIdx.x
        t = cuda.threadIdx.x
        buf = cuda.shared.array(BLOCK, T)
        m = x.shape[2]
        for c in range(cuda.blockIdx.y, x.shape[1], cuda.gridDim.y):
            acc = zero
            for q in range(b * chunk + t, min((b + 1) * chunk, x.shape[0] * m), BLOCK):
                n = q // m
                acc += x[n, c, q - n * m]
            buf[t] = acc
            _block_sum(buf, t)
            if t == 0:
                part[c, b] = buf[0]
            cuda.syncthreads()

    ns.softmax_rows, ns.softmax_rows_backward = softmax_rows, softmax_rows_backward
    ns.channel_partial = channel_partial
    return ns


# ---------------------------------------------------------------- host side


def n_chunks(total: int, rows: int, blocks_wanted: int, min_chunk: int = 8 * BLOCK) -> int:
    """Chunks per row so that rows * chunks is about ``blocks_wanted``, each chunk holding at
    least ``min_chunk`` elements."""
    want = -(-blocks_wanted // max(rows, 1))
    return int(max(1, min(want, -(-total // min_chunk))))


def row_reduce(ctx, op, x2, out=None):
    """out[r] = sum / max / min of x2[r, :] for a (rows, K) array."""
    rows, k = x2.shape
    dt = x2.dtype
    out = ctx.empty((rows,), x2.dtype) if out is None else out
    chunks = n_chunks(k, rows, ctx.blocks_wanted)
    if chunks > 1:
        chunk = -(-k // chunks)
        part = ctx.empty((rows, chunks), dt)
        ctx.launch(f"red.partial.{op}", dt, (chunks, ctx.cap(rows)), BLOCK,
                   (x2, np.int64(chunk), part))
        x2 = part
    ctx.launch(f"red.{op}", dt, ctx.cap(rows), BLOCK, (x2, out))
    return out


def last_axis_sum(ctx, x2):
    return row_reduce(ctx, "sum", x2)


def channel_sums(ctx, x3):
    """(C,) sums of an (N, C, L) array over N and L (a bias gradient)."""
    n_img, c, m = x3.shape
    dt = x3.dtype
    chunks = n_chunks(n_img * m, c, ctx.blocks_wanted)
    chunk = -(-(n_img * m) // chunks)
    part = ctx.empty((c, chunks), dt)
    ctx.launch("red.channel_partial", dt, (chunks, ctx.cap(c)), BLOCK,
               (x3, np.int64(chunk), part))
    if chunks == 1:
        return part.reshape((c,))
    return row_reduce(ctx, "sum", part)
