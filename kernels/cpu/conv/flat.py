"""Flat direct kernels: stride-1 convolutions with few channels (LeNet's layers, depthwise
layers), without im2col.

One ``prange`` task per image pads it into a small plane; output unit q reads tap (i, j) at
``q + i*dh*Wp + j*dw`` of the flattened plane, so every tap is one long contiguous
multiply-add, done for four output channels and three taps per pass. The input gradient is the
same forward kernel run on the output gradient with the flipped, channel-swapped kernel
(:func:`grad_input`); the weight gradient sums twelve dot products per pass into per-task
partials (flat_grad_params).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..jit import PARALLEL, PARALLEL_SUMS, SERIAL, SERIAL_SUMS, ZERO, U, njit
from ..threads import split

# Stride 1, few channels (LeNet-sized layers): one task per image, no im2col. The image is
# padded into a small per-task plane; with the "flat" indexing (layout.py), output unit q reads tap
# (i, j) at q + i*dh*Wp + j*dw, so each tap is one long contiguous multiply-add over the whole
# plane (M = (OH-1)*Wp + OW positions; the Wp-OW junk columns per row are never read back,
# and are kept at zero in gradients so that they add nothing).


@njit(**SERIAL)
def _flat_taps4(rows, w, ci0, cg, kh, kw, dh, dw, wp, o0, m, a0, a1, a2, a3):
    """a_r[q] += sum over channels and taps of w[o0+r, ci, i, j] * rows[ci0+ci, q + off]:
    four output channels and three (or two) taps of a kernel row per pass, so each accumulator
    load/store carries up to twelve multiply-adds (the passes are store-bound otherwise)."""
    for ci in range(cg):
        row = rows[ci0 + ci]
        for i in range(kh):
            j = 0
            while j < kw:
                off = U(i * dh * wp + j * dw)
                if j + 3 <= kw:
                    d1, d2 = U(dw), U(2 * dw)
                    w00, w10 = w[o0, ci, i, j], w[o0 + 1, ci, i, j]
                    w20, w30 = w[o0 + 2, ci, i, j], w[o0 + 3, ci, i, j]
                    w01, w11 = w[o0, ci, i, j + 1], w[o0 + 1, ci, i, j + 1]
                    w21, w31 = w[o0 + 2, ci, i, j + 1], w[o0 + 3, ci, i, j + 1]
                    w02, w12 = w[o0, ci, i, j + 2], w[o0 + 1, ci, i, j + 2]
                    w22, w32 = w[o0 + 2, ci, i, j + 2], w[o0 + 3, ci, i, j + 2]
                    for q in range(U(m)):
                        u = row[off + q]
                        v = row[off + d1 + q]
                        t = row[off + d2 + q]
                        a0[q] += w00 * u + w01 * v + w02 * t
                        a1[q] += w10 * u + w11 * v + w12 * t
                        a2[q] += w20 * u + w21 * v + w22 * t
                        a3[q] += w30 * u + w31 * v + w32 * t
                    j += 3
                elif j + 2 <= kw:
                    d1 = U(dw)
                    w00, w10 = w[o0, ci, i, j], w[o0 + 1, ci, i, j]
                    w20, w30 = w[o0 + 2, ci, i, j], w[o0 + 3, ci, i, j]
                    w01, w11 = w[o0, ci, i, j + 1], w[o0 + 1, ci, i, j + 1]
                    w21, w31 = w[o0 + 2, ci, i, j + 1], w[o0 + 3, ci, i, j + 1]
                    for q in range(U(m)):
                        u = row[off + q]
                        v = row[off + d1 + q]
                        a0[q] += w00 * u + w01 * v
                        a1[q] += w10 * u + w11 * v
                        a2[q] += w20 * u + w21 * v
                        a3[q] += w30 * u + w31 * v
                    j += 2
                else:
                    w0, w1 = w[o0, ci, i, j], w[o0 + 1, ci, i, j]
                    w2, w3 = w[o0 + 2, ci, i, j], w[o0 + 3, ci, i, j]
                    for q in range(U(m)):
                        v = row[off + q]
                        a0[q] += w0 * v
                        a1[q] += w1 * v
                        a2[q] += w2 * v
                        a3[q] += w3 * v
                    j += 1


@njit(**SERIAL)
def _flat_taps2(rows, w, ci0, cg, kh, kw, dh, dw, wp, o0, m, a0, a1):
    """Two output channels (LeNet's conv1 has six: a block of four, then this), three taps of
    a kernel row per pass."""
    for ci in range(cg):
        row = rows[ci0 + ci]
        for i in range(kh):
            j = 0
            while j < kw:
                off = U(i * dh * wp + j * dw)
                if j + 3 <= kw:
                    d1, d2 = U(dw), U(2 * dw)
                    w00, w01, w02 = w[o0, ci, i, j], w[o0, ci, i, j + 1], w[o0, ci, i, j + 2]
                    w10, w11 = w[o0 + 1, ci, i, j], w[o0 + 1, ci, i, j + 1]
                    w12 = w[o0 + 1, ci, i, j + 2]
                    for q in range(U(m)):
                        u = row[off + q]
                        v = row[off + d1 + q]
                        t = row[off + d2 + q]
                        a0[q] += w00 * u + w01 * v + w02 * t
                        a1[q] += w10 * u + w11 * v + w12 * t
                    j += 3
                else:
                    w0, w1 = w[o0, ci, i, j], w[o0 + 1, ci, i, j]
                    for q in range(U(m)):
                        v = row[off + q]
                        a0[q] += w0 * v
                        a1[q] += w1 * v
                    j += 1


@njit(**SERIAL)
def _flat_taps1(rows, w, ci0, cg, kh, kw, dh, dw, wp, o, m, acc):
    """One output channel (depthwise layers, the channels left over from blocks of four): three
    taps of a kernel row per pass."""
    for ci in range(cg):
        row = rows[ci0 + ci]
        for i in range(kh):
            j = 0
            while j < kw:
                off = U(i * dh * wp + j * dw)
                if j + 3 <= kw:
                    d1, d2 = U(dw), U(2 * dw)
                    w0, w1, w2 = w[o, ci, i, j], w[o, ci, i, j + 1], w[o, ci, i, j + 2]
                    for q in range(U(m)):
                        acc[q] += w0 * row[off + q] + w1 * row[off + d1 + q] + \
                            w2 * row[off + d2 + q]
                    j += 3
                else:
                    wv = w[o, ci, i, j]
                    for q in range(U(m)):
                        acc[q] += wv * row[off + q]
                    j += 1


@njit(**PARALLEL)
def flat_forward(x, w, bias, has_bias, ph, pw, dh, dw, groups, y):
    """y = conv2d(x, w) + b, stride 1; parallel over images."""
    n_img, n_in, h, wd = x.shape
    n_out, cg, kh, kw = w.shape
    og = n_out // groups
    oh_n, ow_n = y.shape[2], y.shape[3]
    hp, wp = h + 2 * ph, wd + 2 * pw
    m = (oh_n - 1) * wp + ow_n
    zero = y.dtype.type(0)
    for n in prange(n_img):
        xp = np.zeros((n_in, hp * wp), dtype=x.dtype)
        for c in range(n_in):
            for a in range(h):
                dst = U((a + ph) * wp + pw)
                for b in range(U(wd)):
                    xp[c, dst + b] = x[n, c, a, b]
        acc = np.empty((4, m), dtype=y.dtype)
        for g in range(groups):
            o = g * og
            while o < (g + 1) * og:
                left = (g + 1) * og - o
                nb = 4 if left >= 4 else (2 if left >= 2 else 1)
                for r in range(nb):
                    bv = bias[o + r] if has_bias else zero
                    for q in range(U(m)):
                        acc[r, q] = bv
                if nb == 4:
                    _flat_taps4(xp, w, g * cg, cg, kh, kw, dh, dw, wp, o, m,
                                acc[0], acc[1], acc[2], acc[3])
                elif nb == 2:
                    _flat_taps2(xp, w, g * cg, cg, kh, kw, dh, dw, wp, o, m, acc[0], acc[1])
                else:
                    _flat_taps1(xp, w, g * cg, cg, kh, kw, dh, dw, wp, o, m, acc[0])
                for r in range(nb):
                    for a in range(oh_n):
                        src = U(a * wp)
                        for b in range(U(ow_n)):
                            y[n, o + r, a, b] = acc[r, src + b]
                o += nb


@njit(**PARALLEL)
def flat_grad_input(gy, w, ph, pw, dh, dw, groups, gx):
    """conv2d's input gradient by scattering, one tap at a time (4, 2 or 1 input channels per
    pass); parallel over images, each writing its own. The fallback of :func:`_flat_input`."""
    n_img, n_in, h, wd = gx.shape
    n_out, cg, kh, kw = w.shape
    og = n_out // groups
    oh_n, ow_n = gy.shape[2], gy.shape[3]
    hp, wp = h + 2 * ph, wd + 2 * pw
    m = (oh_n - 1) * wp + ow_n
    zero = gx.dtype.type(0)
    for n in prange(n_img):
        gyf = np.zeros((n_out, m), dtype=gy.dtype)
        for o in range(n_out):
            for a in range(oh_n):
                dst = U(a * wp)
                for b in range(U(ow_n)):
                    gyf[o, dst + b] = gy[n, o, a, b]
        planes = np.empty((4, hp * wp), dtype=gx.dtype)
        for g in range(groups):
            ci = 0
            while ci < cg:
                nb = 4 if cg - ci >= 4 else (2 if cg - ci >= 2 else 1)
                for r in range(nb):
                    for q in range(U(hp * wp)):
                        planes[r, q] = zero
                p0, p1, p2, p3 = planes[0], planes[1], planes[2], planes[3]
                for o in range(g * og, (g + 1) * og):
                    src = gyf[o]
                    for i in range(kh):
                        for j in range(kw):
                            off = U(i * dh * wp + j * dw)
                            if nb == 4:
                                w0, w1 = w[o, ci, i, j], w[o, ci + 1, i, j]
                                w2, w3 = w[o, ci + 2, i, j], w[o, ci + 3, i, j]
                                for q in range(U(m)):
                                    v = src[q]
                                    p0[off + q] += w0 * v
                                    p1[off + q] += w1 * v
                                    p2[off + q] += w2 * v
                                    p3[off + q] += w3 * v
                            elif nb == 2:
                                w0, w1 = w[o, ci, i, j], w[o, ci + 1, i, j]
                                for q in range(U(m)):
                                    v = src[q]
                                    p0[off + q] += w0 * v
                                    p1[off + q] += w1 * v
                            else:
                                wv = w[o, ci, i, j]
                                for q in range(U(m)):
                                    p0[off + q] += wv * src[q]
                for r in range(nb):
                    c = g * cg + ci + r
                    for a in range(h):
                        s0 = U((a + ph) * wp + pw)
                        for b in range(U(wd)):
                            gx[n, c, a, b] = planes[r, s0 + b]
                ci += nb


@njit(**PARALLEL_SUMS)  # reassoc: vector sums
def flat_grad_params(gy, x, ph, pw, dh, dw, groups, ranges, gw_parts, gb_parts):
    """Per-task partial weight and bias gradients, stride 1: task t sums over the images
    ranges[t, 0]:ranges[t, 1] into gw_parts[t] and gb_parts[t] (summed by the caller)."""
    n_img, n_in, h, wd = x.shape
    n_out, cg, kh, kw = gw_parts.shape[1:]
    og = n_out // groups
    oh_n, ow_n = gy.shape[2], gy.shape[3]
    hp, wp = h + 2 * ph, wd + 2 * pw
    m = (oh_n - 1) * wp + ow_n
    for t in prange(ranges.shape[0]):
        xp = np.zeros((n_in, hp * wp), dtype=x.dtype)
        gyf = np.zeros((n_out, m), dtype=gy.dtype)  # junk columns stay zero
        gw = gw_parts[t]
        gb = gb_parts[t]
        for n in range(ranges[t, 0], ranges[t, 1]):
            for c in range(n_in):
                for a in range(h):
                    dst = U((a + ph) * wp + pw)
                    for b in range(U(wd)):
                        xp[c, dst + b] = x[n, c, a, b]
            for o in range(n_out):
                total = gy.dtype.type(0)
                for a in range(oh_n):
                    dst = U(a * wp)
                    for b in range(U(ow_n)):
                        v = gy[n, o, a, b]
                        gyf[o, dst + b] = v
                        total += v
                gb[o] += total
            o = ZERO  # an int64, not Literal[int](0): one specialisation of the helpers
            while o < n_out:
                g = o // og
                four = o + 4 <= (g + 1) * og  # four outputs of one group share the input loads
                for ci in range(cg):
                    row = xp[g * cg + ci]
                    for i in range(kh):
                        j = ZERO
                        while j < kw:
                            if four and j + 3 <= kw:
                                _grad_w_block(gyf, row, o, ci, i, j, dh, dw, wp, m, gw)
                                j += 3
                            elif four and j + 2 <= kw:
                                _grad_w_block2(gyf, row, o, ci, i, j, dh, dw, wp, m, gw)
                                j += 2
                            else:
                                off = U(i * dh * wp + j * dw)
                                for r in range(4 if four else 1):
                                    src = gyf[o + r]
                                    acc = gw.dtype.type(0)
                                    for q in range(U(m)):
                                        acc += src[q] * row[off + q]
                                    gw[o + r, ci, i, j] += acc
                                j += 1
                o += 4 if four else 1


@njit(**SERIAL_SUMS)
def _grad_w_block(gyf, row, o, ci, i, j, dh, dw, wp, m, gw):
    """gw[o+r, ci, i, j+t] += sum_q gyf[o+r, q] * row[off_t + q] for r < 4, t < 3: twelve sums
    in one pass (7 loads per 12 multiply-adds instead of 2 per 1)."""
    off = U(i * dh * wp + j * dw)
    d1, d2 = U(dw), U(2 * dw)
    g0, g1, g2, g3 = gyf[o], gyf[o + 1], gyf[o + 2], gyf[o + 3]
    z = gw.dtype.type(0)
    s00 = s01 = s02 = s10 = s11 = s12 = s20 = s21 = s22 = s30 = s31 = s32 = z
    for q in range(U(m)):
        a, b, c = row[off + q], row[off + d1 + q], row[off + d2 + q]
        e0, e1, e2, e3 = g0[q], g1[q], g2[q], g3[q]
        s00 += e0 * a
        s01 += e0 * b
        s02 += e0 * c
        s10 += e1 * a
        s11 += e1 * b
        s12 += e1 * c
        s20 += e2 * a
        s21 += e2 * b
        s22 += e2 * c
        s30 += e3 * a
        s31 += e3 * b
        s32 += e3 * c
    gw[o, ci, i, j] += s00
    gw[o, ci, i, j + 1] += s01
    gw[o, ci, i, j + 2] += s02
    gw[o + 1, ci, i, j] += s10
    gw[o + 1, ci, i, j + 1] += s11
    gw[o + 1, ci, i, j + 2] += s12
    gw[o + 2, ci, i, j] += s20
    gw[o + 2, ci, i, j + 1] += s21
    gw[o + 2, ci, i, j + 2] += s22
    gw[o + 3, ci, i, j] += s30
    gw[o + 3, ci, i, j + 1] += s31
    gw[o + 3, ci, i, j + 2] += s32


@njit(**SERIAL_SUMS)
def _grad_w_block2(gyf, row, o, ci, i, j, dh, dw, wp, m, gw):
    """As :func:`_grad_w_block` for two taps (the tail of a 5-wide kernel row): eight sums."""
    off = U(i * dh * wp + j * dw)
    d1 = U(dw)
    g0, g1, g2, g3 = gyf[o], gyf[o + 1], gyf[o + 2], gyf[o + 3]
    z = gw.dtype.type(0)
    s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = z
    for q in range(U(m)):
        a, b = row[off + q], row[off + d1 + q]
        e0, e1, e2, e3 = g0[q], g1[q], g2[q], g3[q]
        s00 += e0 * a
        s01 += e0 * b
        s10 += e1 * a
        s11 += e1 * b
        s20 += e2 * a
        s21 += e2 * b
        s30 += e3 * a
        s31 += e3 * b
    gw[o, ci, i, j] += s00
    gw[o, ci, i, j + 1] += s01
    gw[o + 1, ci, i, j] += s10
    gw[o + 1, ci, i, j + 1] += s11
    gw[o + 2, ci, i, j] += s20
    gw[o + 2, ci, i, j + 1] += s21
    gw[o + 3, ci, i, j] += s30
    gw[o + 3, ci, i, j + 1] += s31


# ---------------------------------------------------------------------- host side
def grad_input(gy, w, ph, pw, dh, dw, groups, gx):
    """The input gradient of a stride-1 convolution is itself a stride-1 convolution of the
    output gradient with the kernel flipped and its channel axes swapped (per group), padded by
    d*(k-1) - p: the forward kernel, with its multi-tap blocks, does it 1.3-3x faster than
    scattering. With more padding than d*(k-1) (rare), or rows that no output reaches, the
    scatter kernel does it."""
    n_out, cg, kh, kw = w.shape
    qh, qw = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    # exact: every input row and column is reached by some output (not so for the rows that
    # conv_transpose2d's output_padding adds)
    exact = (gx.shape[2] == gy.shape[2] + 2 * qh - dh * (kh - 1)
             and gx.shape[3] == gy.shape[3] + 2 * qw - dw * (kw - 1))
    if exact and qh >= 0 and qw >= 0:
        og = n_out // groups
        wt = np.ascontiguousarray(w.reshape(groups, og, cg, kh, kw)[:, :, :, ::-1, ::-1]
                                  .transpose(0, 2, 1, 3, 4).reshape(groups * cg, og, kh, kw))
        flat_forward(gy, wt, np.zeros(1, gx.dtype), False, qh, qw, dh, dw, groups, gx)
    else:
        flat_grad_input(gy, w, ph, pw, dh, dw, groups, gx)



def grad_params(gy, x, w_shape, padding, dilation, groups, n_threads):
    """(dW, db) of a stride-1 convolution by flat_grad_params, one task per thread."""
    n_img = x.shape[0]
    ranges = np.array(split(n_img, n_threads), dtype=np.int64)
    gw_parts = np.zeros((len(ranges),) + tuple(w_shape), dtype=gy.dtype)
    gb_parts = np.zeros((len(ranges), w_shape[0]), dtype=gy.dtype)
    flat_grad_params(gy, x, *padding, *dilation, groups, ranges, gw_parts, gb_parts)
    return gw_parts.sum(axis=0), gb_parts.sum(axis=0)
