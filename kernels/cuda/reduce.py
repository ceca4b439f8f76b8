"""Reductions over the last axis of a (rows, K) array: one block per row, a strided pass per
thread, then a tree in shared memory. Softmax, the NLL rows and batch-norm statistics reuse the
same pattern. Every other reduction is a permutation (a gather) followed by these."""

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
    zero, one = T(0), T(1)
    ninf, pinf = T(-math.inf), T(math.inf)

    def row_reduce(combine, init):
        @cuda.jit
        def k(x, out):
            r = cuda.blockIdx.x
            t = cuda.threadIdx.x
            buf = cuda.shared.array(BLOCK, T)
            n = x.shape[1]
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

    @cuda.jit
    def nll_rows(logp, target, weight, has_weight, ignore_index, losses, row_w):
        for r in range(cuda.grid(1), losses.size, cuda.gridsize(1)):
            t = target[r]
            if t == ignore_index:
                losses[r] = zero
                row_w[r] = zero
            else:
                w = weight[t] if has_weight else one
                losses[r] = -w * logp[r, t]
                row_w[r] = w

    @cuda.jit
    def nll_rows_backward(g, target, row_w, out):
        """out (rows, C), zeroed by the caller: out[r, t] = -g[r] * w[r]."""
        for r in range(cuda.grid(1), g.size, cuda.gridsize(1)):
            if row_w[r] != zero:
                out[r, target[r]] = -g[r] * row_w[r]

    @cuda.jit
    def channel_stats(x, mean, var):
        """Per-channel mean and biased variance of x (N, C, L): one block per channel, two
        passes (mean, then centred squares)."""
        c = cuda.blockIdx.x
        t = cuda.threadIdx.x
        buf = cuda.shared.array(BLOCK, T)
        n_img, m = x.shape[0], x.shape[2]
        total = n_img * m
        acc = zero
        for q in range(t, total, BLOCK):
            acc += x[q // m, c, q % m]
        buf[t] = acc
        _block_sum(buf, t)
        mu = buf[0] / T(total)
        cuda.syncthreads()
        acc = zero
        for q in range(t, total, BLOCK):
            d = x[q // m, c, q % m] - mu
            acc += d * d
        buf[t] = acc
        _block_sum(buf, t)
        if t == 0:
            mean[c] = mu
            var[c] = buf[0] / T(total)

    @cuda.jit
    def channel_grad_sums(g, x, mean, sg, sgx):
        """sg[c] = sum g, sgx[c] = sum g * (x - mean) over (N, L): one block per channel."""
        c = cuda.blockIdx.x
        t = cuda.threadIdx.x
        b1 = cuda.shared.array(BLOCK, T)
        b2 = cuda.shared.array(BLOCK, T)
        n_img, m = x.shape[0], x.shape[2]
        a1 = zero
        a2 = zero
        mu = mean[c]
        for q in range(t, n_img * m, BLOCK):
            gv = g[q // m, c, q % m]
            a1 += gv
            a2 += gv * (x[q // m, c, q % m] - mu)
        b1[t] = a1
        b2[t] = a2
        _block_sum(b1, t)
        _block_sum(b2, t)
        if t == 0:
            sg[c] = b1[0]
            sgx[c] = b2[0]

    ns.softmax_rows, ns.softmax_rows_backward = softmax_rows, softmax_rows_backward
    ns.nll_rows, ns.nll_rows_backward = nll_rows, nll_rows_backward
    ns.channel_stats, ns.channel_grad_sums = channel_stats, channel_grad_sums
    return ns
