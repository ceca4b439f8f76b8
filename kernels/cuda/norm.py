"""Normalisation on the GPU: batch normalisation and local response normalisation (NCHW,
viewed as (N, C, L)).

Batch statistics are two-pass and split like the other reductions: a 2-D grid of (chunk,
channel) blocks each computes its chunk's mean and centred sum of squares (the chunk is re-read
from L2 for the second pass), and one thread per channel combines the chunks in order with
Chan's formula, which stays accurate where sum-of-squares minus squared-sum would cancel. The
same thread finishes the job: ``invstd = 1/sqrt(var + eps)`` and, in training, the running
statistics' momentum update (unbiased variance), so a training-mode BatchNorm costs three
launches. The backward's sums (of g and g * (x - mean)) go the same way, with the fused ReLU's
mask applied as they are read, and the per-channel finish writes the weight gradient.
"""

from __future__ import annotations

import math
from functools import cache
from types import SimpleNamespace

import numba
import numpy as np
from numba import cuda

from . import reduce as red

BLOCK = red.BLOCK


@cuda.jit(device=True, inline=True)
def _tree(buf, t):
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
    zero, one, two = T(0), T(1), T(2)

    @cuda.jit
    def stats_partial(x, chunk, pmean, pm2):
        """Per (chunk b, channel c): the chunk's mean and centred sum of squares."""
        b = cuda.blockIdx.x
        t = cuda.threadIdx.x
        buf = cuda.shared.array(BLOCK, T)
        m = x.shape[2]
        lo = b * chunk
        hi = min(lo + chunk, x.shape[0] * m)
        for c in range(cuda.blockIdx.y, x.shape[1], cuda.gridDim.y):
            acc = zero
            for q in range(lo + t, hi, BLOCK):
                n = q // m
                acc += x[n, c, q - n * m]
            buf[t] = acc
            _tree(buf, t)
            mu = buf[0] / T(hi - lo)
            cuda.syncthreads()
            acc = zero
            for q in range(lo + t, hi, BLOCK):
                n = q // m
                d = x[n, c, q - n * m] - mu
                acc += d * d
            buf[t] = acc
            _tree(buf, t)
            if t == 0:
                pmean[c, b] = mu
                pm2[c, b] = buf[0]
            cuda.syncthreads()

    @cuda.jit
    def stats_final(pmean, pm2, chunk, total, eps, momentum, update, run_mean, run_var, mean,
                    invstd):
        """Chan's combination of the chunks in order; invstd; the running-statistics update."""
        for c in range(cuda.grid(1), pmean.shape[0], cuda.gridsize(1)):
            count = zero
            mu = zero
            m2 = zero
            for b in range(pmean.shape[1]):
                nb = T(min(chunk, total - b * chunk))
                delta = pmean[c, b] - mu
                new = count + nb
                mu += delta * (nb / new)
                m2 += pm2[c, b] + delta * delta * (count * nb / new)
                count = new
            var = m2 / count
            mean[c] = mu
            invstd[c] = one / math.sqrt(var + eps)
            if update:
                run_mean[c] = (one - momentum) * run_mean[c] + momentum * mu
                run_var[c] = (one - momentum) * run_var[c] + momentum * (
                    m2 / (count - one))

    @cuda.jit
    def invstd_from_var(var, eps, out):
        for c in range(cuda.grid(1), var.size, cuda.gridsize(1)):
            out[c] = one / math.sqrt(var[c] + eps)

    @cuda.jit
    def normalize(x, mean, invstd, weight, bias, relu, y):
        n_img, n_ch, m = x.shape
        for q in range(cuda.grid(1), n_img * n_ch * m, cuda.gridsize(1)):
            p = q % m
            c = (q // m) % n_ch
            n = q // (m * n_ch)
            v = (x[n, c, p] - mean[c]) * invstd[c] * weight[c] + bias[c]
            y[n, c, p] = (zero if v <= zero else v) if relu else v

    @cuda.jit
    def grad_partial(g, x, mean, y, relu, chunk, psg, psgx):
        """Per (chunk, channel): sums of g and g * (x - mean), g masked by the fused ReLU's
        output y where ``relu``."""
        b = cuda.blockIdx.x
        t = cuda.threadIdx.x
        b1 = cuda.shared.array(BLOCK, T)
        b2 = cuda.shared.array(BLOCK, T)
        m = x.shape[2]
        for c in range(cuda.blockIdx.y, x.shape[1], cuda.gridDim.y):
            mu = mean[c]
            a1 = zero
            a2 = zero
            for q in range(b * chunk + t, min((b + 1) * chunk, x.shape[0] * m), BLOCK):
                n = q // m
                p = q - n * m
                gv = g[n, c, p]
                if relu and y[n, c, p] <= zero:
                    gv = zero
                a1 += gv
                a2 += gv * (x[n, c, p] - mu)
            b1[t] = a1
            b2[t] = a2
            _tree(b1, t)
            _tree(b2, t)
            if t == 0:
                psg[c, b] = b1[0]
                psgx[c, b] = b2[0]
            cuda.syncthreads()

    @cuda.jit
    def grad_final(psg, psgx, invstd, sg, sgx, gw):
        for c in range(cuda.grid(1), psg.shape[0], cuda.gridsize(1)):
            a1 = zero
            a2 = zero
            for b in range(psg.shape[1]):
                a1 += psg[c, b]
                a2 += psgx[c, b]
            sg[c] = a1
            sgx[c] = a2
            gw[c] = a2 * invstd[c]

    @cuda.jit
    def backward(g, x, mean, invstd, weight, sg, sgx, training, y, relu, gx):
        n_img, n_ch, m = x.shape
        count = T(n_img * m)
        for q in range(cuda.grid(1), n_img * n_ch * m, cuda.gridsize(1)):
            p = q % m
            c = (q // m) % n_ch
            n = q // (m * n_ch)
            gv = g[n, c, p]
            if relu and y[n, c, p] <= zero:
                gv = zero
            k = weight[c] * invstd[c]
            if training:
                xhat = (x[n, c, p] - mean[c]) * invstd[c]
                gx[n, c, p] = k * (gv - sg[c] / count - xhat * sgx[c] * invstd[c] / count)
            else:
                gx[n, c, p] = k * gv

    @cuda.jit
    def lrn(x, size, alpha, beta, k, y, scale):
        """x, y, scale viewed as (N, C, L)."""
        n_img, n_ch, m = x.shape
        for q in range(cuda.grid(1), n_img * n_ch * m, cuda.gridsize(1)):
            p = q % m
            c = (q // m) % n_ch
            n = q // (m * n_ch)
            acc = zero
            for cc in range(max(c - size // 2, 0), min(c + (size - 1) // 2, n_ch - 1) + 1):
                v = x[n, cc, p]
                acc += v * v
            s = k + alpha / T(size) * acc
            scale[n, c, p] = s
            y[n, c, p] = x[n, c, p] * math.pow(s, -beta)

    @cuda.jit
    def lrn_backward(gy, x, y, scale, size, alpha, beta, gx):
        n_img, n_ch, m = x.shape
        for q in range(cuda.grid(1), n_img * n_ch * m, cuda.gridsize(1)):
            p = q % m
            c = (q // m) % n_ch
            n = q // (m * n_ch)
            acc = zero
            for cc in range(max(c - (size - 1) // 2, 0), min(c + size // 2, n_ch - 1) + 1):
                acc += gy[n, cc, p] * y[n, cc, p] / scale[n, cc, p]
            gx[n, c, p] = gy[n, c, p] * math.pow(scale[n, c, p], -beta) - \
                two * alpha * beta / T(size) * x[n, c, p] * acc

    return SimpleNamespace(stats_partial=stats_partial, stats_final=stats_final,
                           invstd_from_var=invstd_from_var, normalize=normalize,
                           grad_partial=grad_partial, grad_final=grad_final, backward=backward,
                           lrn=lrn, lrn_backward=lrn_backward)


# ---------------------------------------------------------------- host side


def batch_stats(ctx, x3, eps, running_mean, running_var, momentum):
    """(mean, invstd) of an (N, C, L) array per channel; updates the running statistics in
    place when they are given."""
    n_img, c, m = x3.shape
    dt = x3.dtype
    t = np.dtype(dt).type
    total = n_img * m
    chunks = red.n_chunks(total, c, ctx.blocks_wanted)
    chunk = -(-total // chunks)
    chunks = -(-total // chunk)
    pmean = ctx.empty((c, chunks), dt)
    pm2 = ctx.empty((c, chunks), dt)
    ctx.launch("norm.stats_partial", dt, (chunks, ctx.cap(c)), BLOCK,
               (x3, np.int64(chunk), pmean, pm2))
    mean = ctx.empty((c,), dt)
    invstd = ctx.empty((c,), dt)
    update = running_mean is not None
    rm = running_mean if update else mean
    rv = running_var if update else invstd
    ctx.launch("norm.stats_final", dt, ctx.n_blocks(c), ctx.threads,
               (pmean, pm2, np.int64(chunk), np.int64(total), t(eps), t(momentum), update, rm,
                rv, mean, invstd))
    return mean, invstd


def batch_norm_backward(ctx, g3, x3, mean, invstd, weight, training, relu_out):
    n_img, c, m = x3.shape
    dt = x3.dtype
    relu = relu_out is not None
    y = relu_out if relu else x3
    sg = ctx.empty((c,), dt)
    sgx = ctx.empty((c,), dt)
    gw = ctx.empty((c,), dt)
    total = n_img * m
    chunks = red.n_chunks(total, c, ctx.blocks_wanted)
    chunk = -(-total // chunks)
    chunks = -(-total // chunk)
    psg = ctx.empty((c, chunks), dt)
    psgx = ctx.empty((c, chunks), dt)
    ctx.launch("norm.grad_partial", dt, (chunks, ctx.cap(c)), BLOCK,
               (g3, x3, mean, y, relu, np.int64(chunk), psg, psgx))
    ctx.launch("norm.grad_final", dt, ctx.n_blocks(c), ctx.threads,
               (psg, psgx, invstd, sg, sgx, gw))
    gx = ctx.empty(x3.shape, dt)
    ctx.launch("norm.backward", dt, ctx.n_blocks(gx.size), ctx.threads,
               (g3, x3, mean, invstd, weight, sg, sgx, bool(training), y, relu, gx))
    return gx, gw, sg
