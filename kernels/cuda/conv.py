"""Convolution on the GPU: im2col into a (C_g*kH*kW, N*L) column matrix, a tiled GEMM
(kernels/cuda/matmul.py), and the reshaping kernels around it. The input gradient is a gather
(col2im): each thread owns one input pixel and sums the column entries that read it, so no two
threads write the same element and no atomics are needed."""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace

import numba
import numpy as np
from numba import cuda


@cache
def kernels(dtype) -> SimpleNamespace:
    T = numba.from_dtype(np.dtype(dtype))
    zero = T(0)

    @cuda.jit
    def im2col(x, c0, cg, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, cols):
        """cols[(c*kh+i)*kw+j, n*L + oh*W_out + ow] = x[n, c0+c, oh*sh-ph+i*dh, ow*sw-pw+j*dw]."""
        total = cols.shape[0] * cols.shape[1]
        for q in range(cuda.grid(1), total, cuda.gridsize(1)):
            n_cols = cols.shape[1]
            r = q // n_cols
            p = q - r * n_cols
            L = oh_n * ow_n
            n = p // L
            rem = p - n * L
            oh = rem // ow_n
            ow = rem - oh * ow_n
            c = r // (kh * kw)
            ij = r - c * kh * kw
            i = ij // kw
            j = ij - i * kw
            ih = oh * sh - ph + i * dh
            iw = ow * sw - pw + j * dw
            if 0 <= ih < x.shape[2] and 0 <= iw < x.shape[3]:
                cols[r, p] = x[n, c0 + c, ih, iw]
            else:
                cols[r, p] = zero

    @cuda.jit
    def col2im(cols, c0, cg, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, gx):
        """gx[n, c0+c, h, w] = sum of cols entries that im2col read from that pixel."""
        n_img, h_n, w_n = gx.shape[0], gx.shape[2], gx.shape[3]
        for q in range(cuda.grid(1), n_img * cg * h_n * w_n, cuda.gridsize(1)):
            w = q % w_n
            h = (q // w_n) % h_n
            c = (q // (w_n * h_n)) % cg
            n = q // (w_n * h_n * cg)
            L = oh_n * ow_n
            acc = zero
            for i in range(kh):
                th = h + ph - i * dh
                if th < 0 or th % sh != 0:
                    continue
                oh = th // sh
                if oh >= oh_n:
                    continue
                for j in range(kw):
                    tw = w + pw - j * dw
                    if tw < 0 or tw % sw != 0:
                        continue
                    ow = tw // sw
                    if ow >= ow_n:
                        continue
                    acc += cols[(c * kh + i) * kw + j, n * L + oh * ow_n + ow]
            gx[n, c0 + c, h, w] = acc

    @cuda.jit
    def gemm_to_nchw(tmp, o0, bias, has_bias, y):
        """y[n, o0+o, p] = tmp[o, n*L + p] (+ bias[o0+o]); y viewed as (N, O, L)."""
        og, n_cols = tmp.shape[0], tmp.shape[1]
        for q in range(cuda.grid(1), og * n_cols, cuda.gridsize(1)):
            o = q // n_cols
            col = q - o * n_cols
            L = y.shape[2]
            n = col // L
            p = col - n * L
            v = tmp[o, col]
            if has_bias:
                v += bias[o0 + o]
            y[n, o0 + o, p] = v

    @cuda.jit
    def nchw_to_gemm(gy, o0, out):
        """out[o, n*L + p] = gy[n, o0+o, p]: the inverse of gemm_to_nchw."""
        og, n_cols = out.shape[0], out.shape[1]
        for q in range(cuda.grid(1), og * n_cols, cuda.gridsize(1)):
            o = q // n_cols
            col = q - o * n_cols
            L = gy.shape[2]
            n = col // L
            out[o, col] = gy[n, o0 + o, col - n * L]

    ns = SimpleNamespace(im2col=im2col, col2im=col2im, gemm_to_nchw=gemm_to_nchw,
                         nchw_to_gemm=nchw_to_gemm)
    return ns
