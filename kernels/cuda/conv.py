"""2-D convolution (cross-correlation, NCHW) and its gradients on the GPU.

Two algorithms, chosen per layer by :func:`use_direct`:

- **GEMM** (every layer with more than one input channel per group). im2col writes the
  (C_in*kH*kW, N*H_out*W_out) column matrix of all groups in one launch: one thread per
  (channel, output pixel) computes that pixel's position once and writes its kH*kW taps, each
  store contiguous across a warp. Then, per pass, the register-blocked GEMM of
  :mod:`.linalg`, batched over groups (grid z):
  forward ``y_g = W_g @ cols_g``, stored straight into NCHW with the bias;
  weight gradient ``dW_g = dY_g @ cols_g^T`` (K = N*H_out*W_out: split across blocks, summed
  deterministically); input gradient ``dcols_g = W_g^T @ dY_g`` then col2im, a gather in which
  each input pixel sums the column entries that read it (one writer per element, no atomics).
  The output gradient is laid out once as (C_out, N*L) for both products.
- **direct** (depthwise layers, one input channel per group): a GEMM with one row per group
  would leave 63 of 64 tile rows empty. Forward and input gradient are one thread per output
  (input) element; the weight gradient reduces N*H_out*W_out products per (channel, tap) in two
  passes, per-block partials then their sum in block order.

The bias gradient is a per-channel sum of dY: two passes as well (:mod:`.reduce`).
No float atomics anywhere, so every run gives the same bits.

The host functions take a ``ctx`` from the backend: ``ctx.empty(shape, dtype)``,
``ctx.launch(key, dtype, grid, block, args)`` (the kernel ``key`` of :mod:`numbaconv.kernels.cuda`
specialised to ``dtype``), ``ctx.n_blocks(n)`` and ``ctx.threads`` (a 1-D grid for n
elements), ``ctx.cap(blocks)`` (a grid dimension within the device's limit), ``ctx.dummy(dtype)``
(a one-element array for an unused argument) and ``ctx.blocks_wanted`` (blocks that fill the
device).
"""

from __future__ import annotations

import os
from functools import cache
from types import SimpleNamespace

import numba
import numpy as np
from numba import cuda

from . import linalg as mm
from . import reduce as red

MAX_DIRECT_TAPS = 64  # the direct weight gradient keeps one accumulator per tap in registers
# NUMBACONV_CUDA_CONV=im2col: materialise the column matrix instead of reading it implicitly
IMPLICIT = os.environ.get("NUMBACONV_CUDA_CONV", "implicit").strip().lower() != "im2col"


@cache
def kernels(dtype) -> SimpleNamespace:
    T = numba.from_dtype(np.dtype(dtype))
    zero = T(0)

    @cuda.jit
    def im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, cols):
        """cols[(c*kh+i)*kw+j, n*L + oh*W_out + ow] = x[n, c, oh*sh-ph+i*dh, ow*sw-pw+j*dw]
        (0 outside the image): one thread per (c, n, oh, ow), looping over the taps."""
        n_cols = cols.shape[1]
        c_n, h_n, w_n = x.shape[1], x.shape[2], x.shape[3]
        L = oh_n * ow_n
        for q in range(cuda.grid(1), c_n * n_cols, cuda.gridsize(1)):
            c = q // n_cols
            col = q - c * n_cols
            n = col // L
            p = col - n * L
            oh = p // ow_n
            ow = p - oh * ow_n
            h0 = oh * sh - ph
            w0 = ow * sw - pw
            r = c * kh * kw
            for i in range(kh):
                ih = h0 + i * dh
                for j in range(kw):
                    iw = w0 + j * dw
                    if 0 <= ih < h_n and 0 <= iw < w_n:
                        cols[r, col] = x[n, c, ih, iw]
                    else:
                        cols[r, col] = zero
                    r += 1

    @cuda.jit
    def col2im(cols, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, gx):
        """gx[n, c, h, w] = sum of the column entries that im2col read from that pixel."""
        n_img, c_n, h_n, w_n = gx.shape
        L = oh_n * ow_n
        for q in range(cuda.grid(1), n_img * c_n * h_n * w_n, cuda.gridsize(1)):
            w = q % w_n
            h = (q // w_n) % h_n
            c = (q // (w_n * h_n)) % c_n
            n = q // (w_n * h_n * c_n)
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
            gx[n, c, h, w] = acc

    @cuda.jit
    def nchw_to_rows(gy, out):
        """out[o, n*L + p] = gy[n, o, p]: the output gradient as a (C_out, N*L) matrix."""
        n_img, o_n, L = gy.shape
        n_cols = n_img * L
        for q in range(cuda.grid(1), o_n * n_cols, cuda.gridsize(1)):
            o = q // n_cols
            col = q - o * n_cols
            n = col // L
            out[o, col] = gy[n, o, col - n * L]

    @cuda.jit
    def depthwise(x, w, bias, has_bias, sh, sw, ph, pw, dh, dw, y):
        """y[n, o, oh, ow] = sum_ij w[o, 0, i, j] * x[n, o // mult, ...] (+ bias[o])."""
        n_img, o_n, oh_n, ow_n = y.shape
        mult = o_n // x.shape[1]
        h_n, w_n = x.shape[2], x.shape[3]
        kh, kw = w.shape[2], w.shape[3]
        for q in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            ow = q % ow_n
            oh = (q // ow_n) % oh_n
            o = (q // (ow_n * oh_n)) % o_n
            n = q // (ow_n * oh_n * o_n)
            c = o // mult
            acc = bias[o] if has_bias else zero
            for i in range(kh):
                ih = oh * sh - ph + i * dh
                if ih < 0 or ih >= h_n:
                    continue
                for j in range(kw):
                    iw = ow * sw - pw + j * dw
                    if 0 <= iw < w_n:
                        acc += w[o, 0, i, j] * x[n, c, ih, iw]
            y[n, o, oh, ow] = acc

    @cuda.jit
    def depthwise_grad_input(gy, w, sh, sw, ph, pw, dh, dw, gx):
        """gx[n, c, h, w] = sum over the outputs o of group c and the taps that read (h, w)."""
        n_img, c_n, h_n, w_n = gx.shape
        o_n, oh_n, ow_n = gy.shape[1], gy.shape[2], gy.shape[3]
        mult = o_n // c_n
        kh, kw = w.shape[2], w.shape[3]
        for q in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
            iw = q % w_n
            ih = (q // w_n) % h_n
            c = (q // (w_n * h_n)) % c_n
            n = q // (w_n * h_n * c_n)
            acc = zero
            for i in range(kh):
                th = ih + ph - i * dh
                if th < 0 or th % sh != 0:
                    continue
                oh = th // sh
                if oh >= oh_n:
                    continue
                for j in range(kw):
                    tw = iw + pw - j * dw
                    if tw < 0 or tw % sw != 0:
                        continue
                    ow = tw // sw
                    if ow >= ow_n:
                        continue
                    for o in range(c * mult, (c + 1) * mult):
                        acc += gy[n, o, oh, ow] * w[o, 0, i, j]
            gx[n, c, ih, iw] = acc

    BLOCK = red.BLOCK

    @cuda.jit
    def depthwise_grad_weight_partial(gy, x, kh, kw, sh, sw, ph, pw, dh, dw, chunk, part):
        """part[o, i*kw+j, b] = sum over the b-th chunk of (n, oh, ow) of
        gy[n, o, oh, ow] * x[n, o // mult, oh*sh-ph+i*dh, ow*sw-pw+j*dw]."""
        acc = cuda.local.array(MAX_DIRECT_TAPS, T)
        buf = cuda.shared.array(BLOCK, T)
        t = cuda.threadIdx.x
        b = cuda.blockIdx.x
        n_img, o_n, oh_n, ow_n = gy.shape
        h_n, w_n = x.shape[2], x.shape[3]
        L = oh_n * ow_n
        taps = kh * kw
        hi = min((b + 1) * chunk, n_img * L)
        for o in range(cuda.blockIdx.y, o_n, cuda.gridDim.y):
            c = o // (o_n // x.shape[1])
            for tap in range(taps):
                acc[tap] = zero
            for q in range(b * chunk + t, hi, BLOCK):
                n = q // L
                p = q - n * L
                oh = p // ow_n
                ow = p - oh * ow_n
                g = gy[n, o, oh, ow]
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= h_n:
                        continue
                    for j in range(kw):
                        iw = ow * sw - pw + j * dw
                        if 0 <= iw < w_n:
                            acc[i * kw + j] += g * x[n, c, ih, iw]
            for tap in range(taps):
                buf[t] = acc[tap]
                cuda.syncthreads()
                s = BLOCK // 2
                while s > 0:
                    if t < s:
                        buf[t] += buf[t + s]
                    cuda.syncthreads()
                    s //= 2
                if t == 0:
                    part[o, tap, b] = buf[0]
                cuda.syncthreads()

    return SimpleNamespace(im2col=im2col, col2im=col2im, nchw_to_rows=nchw_to_rows,
                           depthwise=depthwise, depthwise_grad_input=depthwise_grad_input,
                           depthwise_grad_weight_partial=depthwise_grad_weight_partial)


# ---------------------------------------------------------------- host side


def use_direct(c_in: int, groups: int, kh: int, kw: int) -> bool:
    """Depthwise layers (one input channel per group, several groups) go direct."""
    return groups > 1 and c_in == groups and kh * kw <= MAX_DIRECT_TAPS


def _geometry(kh, kw, stride, padding, dilation, oh, ow):
    i64 = np.int64
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    return (i64(kh), i64(kw), i64(sh), i64(sw), i64(ph), i64(pw), i64(dh), i64(dw), i64(oh),
            i64(ow))


def _im2col(ctx, x, kh, kw, stride, padding, dilation, oh, ow):
    n_img, c_in = x.shape[0], x.shape[1]
    cols = ctx.empty((c_in * kh * kw, n_img * oh * ow), x.dtype)
    ctx.launch("conv.im2col", x.dtype, ctx.n_blocks(c_in * cols.shape[1]), ctx.threads,
               (x, *_geometry(kh, kw, stride, padding, dilation, oh, ow), cols))
    return cols


def conv2d_forward(ctx, x, w, b, stride, padding, dilation, groups):
    """y = conv2d(x, w, b): (N, C_out, H_out, W_out)."""
    n_img, c_in, h, wd = x.shape
    n_out, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = ctx.empty((n_img, n_out, oh, ow), x.dtype)
    if y.size == 0:
        return y
    i64 = np.int64
    if use_direct(c_in, groups, kh, kw):
        bias = b if b is not None else ctx.dummy(x.dtype)
        ctx.launch("conv.depthwise", x.dtype, ctx.n_blocks(y.size), ctx.threads,
                   (x, w, bias, b is not None, i64(sh), i64(sw), i64(ph), i64(pw), i64(dh),
                    i64(dw), y))
        return y
    og, kk, L = n_out // groups, cg * kh * kw, oh * ow
    ncols = n_img * L
    nchw = (y.reshape(y.size), L, n_out, b)
    if IMPLICIT:
        mm.gemm(ctx, w.reshape(n_out * kk), (og * kk, kk, 1), x.reshape(x.size), None, og,
                ncols, kk, groups, None, x.dtype, nchw=nchw,
                implicit=_implicit(ctx, mm.IM2COL, x.shape, groups, kh, kw, stride, padding,
                                   dilation, oh, ow))
        return y
    cols = _im2col(ctx, x, kh, kw, stride, padding, dilation, oh, ow)
    mm.gemm(ctx, w.reshape(n_out * kk), (og * kk, kk, 1), cols.reshape(cols.size),
            (kk * ncols, ncols, 1), og, ncols, kk, groups, None, x.dtype, nchw=nchw)
    return y


def _implicit(ctx, mode, x_shape, groups, kh, kw, stride, padding, dilation, oh, ow):
    """(mode, geometry, device tap table) for the implicit GEMM; the table is uploaded once
    per layer geometry and kept by the backend."""
    geom, table = mm.conv_geometry(x_shape, groups, kh, kw, stride, padding, dilation, oh, ow)
    tab = ctx.constant(("conv taps", table.tobytes()), table)
    return mode, geom, tab


def conv2d_backward(ctx, gy, x, w, stride, padding, dilation, groups, needs, x_shape, w_shape):
    """(dx, dw, db) of conv2d, each None where ``needs`` says it is not wanted; ``x`` is read
    for dw only, ``w`` for dx only (either may be None where not read)."""
    need_x, need_w, need_b = needs
    n_out, cg, kh, kw = w_shape
    n_img, c_in = x_shape[0], x_shape[1]
    oh, ow = gy.shape[2], gy.shape[3]
    og, kk, L = n_out // groups, cg * kh * kw, oh * ow
    dt = gy.dtype
    gx = gw = gb = None
    gy3 = gy.reshape((n_img, n_out, L))
    if need_b:
        gb = red.channel_sums(ctx, gy3)
    geom = _geometry(kh, kw, stride, padding, dilation, oh, ow)
    if use_direct(c_in, groups, kh, kw):
        i64 = np.int64
        (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
        if need_x:
            gx = ctx.empty(x_shape, dt)
            ctx.launch("conv.depthwise_grad_input", dt,
                       ctx.n_blocks(gx.size), ctx.threads,
                       (gy, w, i64(sh), i64(sw), i64(ph), i64(pw), i64(dh), i64(dw), gx))
        if need_w:
            total = n_img * L
            chunks = red.n_chunks(total, n_out, ctx.blocks_wanted)
            chunk = -(-total // chunks)
            part = ctx.empty((n_out, kh * kw, chunks), dt)
            ctx.launch("conv.depthwise_grad_weight_partial", dt,
                       (chunks, ctx.cap(n_out)), red.BLOCK,
                       (gy, x, *geom[:8], i64(chunk), part))
            gw = red.last_axis_sum(ctx, part.reshape((n_out * kh * kw, chunks))).reshape(
                w_shape)
        return gx, gw, gb
    ncols = n_img * L
    rows = ctx.empty((n_out, ncols), dt)
    ctx.launch("conv.nchw_to_rows", dt, ctx.n_blocks(rows.size), ctx.threads,
               (gy3, rows))
    rows_flat = rows.reshape(rows.size)
    if need_w:
        gw = ctx.empty((groups, og, kk), dt)
        # dW_g = dY_g @ cols_g^T: the columns read transposed, from the image or from cols
        if IMPLICIT:
            mm.gemm(ctx, rows_flat, (og * ncols, ncols, 1), x.reshape(x.size), None, og, kk,
                    ncols, groups, gw, dt,
                    implicit=_implicit(ctx, mm.IM2COL_T, x.shape, groups, kh, kw, stride,
                                       padding, dilation, oh, ow))
        else:
            cols = _im2col(ctx, x, kh, kw, stride, padding, dilation, oh, ow)
            mm.gemm(ctx, rows_flat, (og * ncols, ncols, 1), cols.reshape(cols.size),
                    (kk * ncols, 1, ncols), og, kk, ncols, groups, gw, dt)
        gw = gw.reshape(w_shape)
    if need_x:
        w_flat = w.reshape(w.size)
        dcols = ctx.empty((c_in * kh * kw, ncols), dt)
        # dcols_g = W_g^T @ dY_g: W read transposed through its strides
        mm.gemm(ctx, w_flat, (og * kk, 1, kk), rows_flat, (og * ncols, ncols, 1), kk, ncols, og,
             groups, dcols.reshape((groups, kk, ncols)), dt)
        gx = ctx.empty(x_shape, dt)
        ctx.launch("conv.col2im", dt, ctx.n_blocks(gx.size), ctx.threads,
                   (dcols, *geom, gx))
    return gx, gw, gb
