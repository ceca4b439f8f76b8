"""Pooling and nearest-neighbour upsampling kernels on NCHW device arrays.

Forward kernels: one thread per output element. Backward kernels are gathers: one thread per
input element finds the outputs whose windows contain it, so each gradient element has exactly
one writer (no atomics). Arrays are viewed as (N*C, H, W) planes.
"""

from __future__ import annotations

import math
from functools import cache
from types import SimpleNamespace

import numba
import numpy as np
from numba import cuda


@cuda.jit(device=True, inline=True)
def _window_outputs(pos, pad, k, s, d, n_out):
    """[lo, hi] range of outputs o whose window (o*s - pad + t*d, t < k) may contain pos."""
    top = pos + pad  # = o*s + t*d
    lo = (top - (k - 1) * d + s - 1) // s if top - (k - 1) * d > 0 else 0
    hi = top // s
    if hi > n_out - 1:
        hi = n_out - 1
    return lo, hi


@cache
def kernels(dtype) -> SimpleNamespace:
    T = numba.from_dtype(np.dtype(dtype))
    zero = T(0)
    ninf = T(-math.inf)

    @cuda.jit
    def max_pool(x, kh, kw, sh, sw, ph, pw, dh, dw, y, idx):
        planes, oh_n, ow_n = y.shape
        for q in range(cuda.grid(1), planes * oh_n * ow_n, cuda.gridsize(1)):
            ow = q % ow_n
            oh = (q // ow_n) % oh_n
            p = q // (ow_n * oh_n)
            h, w = x.shape[1], x.shape[2]
            best = ninf
            bi = -1
            for i in range(kh):
                ih = oh * sh - ph + i * dh
                if ih < 0 or ih >= h:
                    continue
                for j in range(kw):
                    iw = ow * sw - pw + j * dw
                    if iw < 0 or iw >= w:
                        continue
                    v = x[p, ih, iw]
                    if bi < 0 or v > best or v != v:
                        best = v
                        bi = ih * w + iw
            y[p, oh, ow] = best
            idx[p, oh, ow] = bi

    @cuda.jit
    def max_pool_backward(gy, idx, kh, kw, sh, sw, ph, pw, dh, dw, gx):
        planes, h, w = gx.shape
        for q in range(cuda.grid(1), planes * h * w, cuda.gridsize(1)):
            iw = q % w
            ih = (q // w) % h
            p = q // (w * h)
            me = ih * w + iw
            oh_lo, oh_hi = _window_outputs(ih, ph, kh, sh, dh, gy.shape[1])
            ow_lo, ow_hi = _window_outputs(iw, pw, kw, sw, dw, gy.shape[2])
            acc = zero
            for oh in range(oh_lo, oh_hi + 1):
                for ow in range(ow_lo, ow_hi + 1):
                    if idx[p, oh, ow] == me:
                        acc += gy[p, oh, ow]
            gx[p, ih, iw] = acc

    @cuda.jit(device=True, inline=True)
    def _divisor(oh, ow, sh, sw, ph, pw, kh, kw, h, w, include_pad, divisor):
        if divisor != 0:  # divisor_override, any sign
            return divisor
        h0 = oh * sh - ph
        w0 = ow * sw - pw
        h1 = min(h0 + kh, h + ph)
        w1 = min(w0 + kw, w + pw)
        if include_pad:
            return (h1 - h0) * (w1 - w0)
        return (min(h1, h) - max(h0, 0)) * (min(w1, w) - max(w0, 0))

    @cuda.jit
    def avg_pool(x, kh, kw, sh, sw, ph, pw, include_pad, divisor, y):
        planes, oh_n, ow_n = y.shape
        for q in range(cuda.grid(1), planes * oh_n * ow_n, cuda.gridsize(1)):
            ow = q % ow_n
            oh = (q // ow_n) % oh_n
            p = q // (ow_n * oh_n)
            h, w = x.shape[1], x.shape[2]
            acc = zero
            for ih in range(max(oh * sh - ph, 0), min(oh * sh - ph + kh, h)):
                for iw in range(max(ow * sw - pw, 0), min(ow * sw - pw + kw, w)):
                    acc += x[p, ih, iw]
            d = _divisor(oh, ow, sh, sw, ph, pw, kh, kw, h, w, include_pad, divisor)
            y[p, oh, ow] = acc / T(d) if d != 0 else zero

    @cuda.jit
    def avg_pool_backward(gy, kh, kw, sh, sw, ph, pw, include_pad, divisor, gx):
        planes, h, w = gx.shape
        for q in range(cuda.grid(1), planes * h * w, cuda.gridsize(1)):
            iw = q % w
            ih = (q // w) % h
            p = q // (w * h)
            oh_lo, oh_hi = _window_outputs(ih, ph, kh, sh, 1, gy.shape[1])
            ow_lo, ow_hi = _window_outputs(iw, pw, kw, sw, 1, gy.shape[2])
            acc = zero
            for oh in range(oh_lo, oh_hi + 1):
                for ow in range(ow_lo, ow_hi + 1):
                    d = _divisor(oh, ow, sh, sw, ph, pw, kh, kw, h, w, include_pad, divisor)
                    if d != 0:
                        acc += gy[p, oh, ow] / T(d)
            gx[p, ih, iw] = acc

    @cuda.jit
    def adaptive_pool(x, is_max, y, idx):
        planes, oh_n, ow_n = y.shape
        for q in range(cuda.grid(1), planes * oh_n * ow_n, cuda.gridsize(1)):
            ow = q % ow_n
            oh = (q // ow_n) % oh_n
            p = q // (ow_n * oh_n)
            h, w = x.shape[1], x.shape[2]
            h0, h1 = (oh * h) // oh_n, ((oh + 1) * h + oh_n - 1) // oh_n
            w0, w1 = (ow * w) // ow_n, ((ow + 1) * w + ow_n - 1) // ow_n
            acc = zero
            best = ninf
            bi = h0 * w + w0
            for ih in range(h0, h1):
                for iw in range(w0, w1):
                    v = x[p, ih, iw]
                    acc += v
                    if v > best or v != v:
                        best = v
                        bi = ih * w + iw
            if is_max:
                y[p, oh, ow] = best
                idx[p, oh, ow] = bi
            else:
                y[p, oh, ow] = acc / T((h1 - h0) * (w1 - w0))

    @cuda.jit
    def adaptive_avg_backward(gy, gx):
        planes, h, w = gx.shape
        oh_n, ow_n = gy.shape[1], gy.shape[2]
        for q in range(cuda.grid(1), planes * h * w, cuda.gridsize(1)):
            iw = q % w
            ih = (q // w) % h
            p = q // (w * h)
            acc = zero
            for oh in range((ih * oh_n) // h, min(((ih + 1) * oh_n + h - 1) // h, oh_n)):
                h0, h1 = (oh * h) // oh_n, ((oh + 1) * h + oh_n - 1) // oh_n
                if ih < h0 or ih >= h1:
                    continue
                for ow in range((iw * ow_n) // w, min(((iw + 1) * ow_n + w - 1) // w, ow_n)):
                    w0, w1 = (ow * w) // ow_n, ((ow + 1) * w + ow_n - 1) // ow_n
                    if iw < w0 or iw >= w1:
                        continue
                    acc += gy[p, oh, ow] / T((h1 - h0) * (w1 - w0))
            gx[p, ih, iw] = acc

    @cuda.jit
    def adaptive_max_backward(gy, idx, gx):
        planes, h, w = gx.shape
        oh_n, ow_n = gy.shape[1], gy.shape[2]
        for q in range(cuda.grid(1), planes * h * w, cuda.gridsize(1)):
            iw = q % w
            ih = (q // w) % h
            p = q // (w * h)
            me = ih * w + iw
            acc = zero
            for oh in range((ih * oh_n) // h, min(((ih + 1) * oh_n + h - 1) // h, oh_n)):
                for ow in range((iw * ow_n) // w, min(((iw + 1) * ow_n + w - 1) // w, ow_n)):
                    if idx[p, oh, ow] == me:
                        acc += gy[p, oh, ow]
            gx[p, ih, iw] = acc

    @cuda.jit(device=True, inline=True)
    def _nearest(o, scale, n_in):
        s = int(math.floor(numba.float32(o) * scale))
        return s if s < n_in else n_in - 1

    @cuda.jit
    def upsample(x, scale_h, scale_w, y):
        planes, oh_n, ow_n = y.shape
        for q in range(cuda.grid(1), planes * oh_n * ow_n, cuda.gridsize(1)):
            ow = q % ow_n
            oh = (q // ow_n) % oh_n
            p = q // (ow_n * oh_n)
            y[p, oh, ow] = x[p, _nearest(oh, scale_h, x.shape[1]), _nearest(ow, scale_w,
                                                                            x.shape[2])]

    @cuda.jit
    def upsample_backward(gy, scale_h, scale_w, gx):
        """Each input pixel sums the outputs that copied it (outputs map monotonically, so
        they form a contiguous run found by scanning from a lower bound)."""
        planes, h, w = gx.shape
        oh_n, ow_n = gy.shape[1], gy.shape[2]
        for q in range(cuda.grid(1), planes * h * w, cuda.gridsize(1)):
            iw = q % w
            ih = (q // w) % h
            p = q // (w * h)
            acc = zero
            oh = 0
            while oh < oh_n and _nearest(oh, scale_h, h) < ih:
                oh += 1
            while oh < oh_n and _nearest(oh, scale_h, h) == ih:
                ow = 0
                while ow < ow_n and _nearest(ow, scale_w, w) < iw:
                    ow += 1
                while ow < ow_n and _nearest(ow, scale_w, w) == iw:
                    acc += gy[p, oh, ow]
                    ow += 1
                oh += 1
            gx[p, ih, iw] = acc

    return SimpleNamespace(
        max_pool=max_pool, max_pool_backward=max_pool_backward, avg_pool=avg_pool,
        avg_pool_backward=avg_pool_backward, adaptive_pool=adaptive_pool,
        adaptive_avg_backward=adaptive_avg_backward,
        adaptive_max_backward=adaptive_max_backward, upsample=upsample,
        upsample_backward=upsample_backward)
