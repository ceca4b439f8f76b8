"""Direct row loops: depthwise-like groups (one input channel per group, few outputs), where a
GEMM would have one row. One ``prange`` task per output plane (forward), per input plane
(input gradient) or per filter slice (weight gradient), so each task owns what it writes.
"""

from __future__ import annotations

from numba import prange

from ..jit import PARALLEL, PARALLEL_SUMS, U, njit, valid_range


@njit(**PARALLEL)
def direct_forward(x, w, bias, has_bias, sh, sw, ph, pw, dh, dw, groups, y):
    """y[n,o] = b[o] + sum_{ci,i,j} w[o,ci,i,j] * x[n, g*C_g+ci, oh*sh-ph+i*dh, ow*sw-pw+j*dw]."""
    n_img, _, h, wd = x.shape
    n_out, cg, kh, kw = w.shape
    og = n_out // groups
    oh_n, ow_n = y.shape[2], y.shape[3]
    for task in prange(n_img * n_out):
        n = task // n_out
        o = task - n * n_out
        g = o // og
        plane = y[n, o]
        bv = bias[o] if has_bias else y.dtype.type(0)
        for a in range(oh_n):
            for b in range(ow_n):
                plane[a, b] = bv
        for ci in range(cg):
            c = g * cg + ci
            for i in range(kh):
                for j in range(kw):
                    wv = w[o, ci, i, j]
                    off_w = j * dw - pw
                    lo, hi = valid_range(off_w, sw, wd, ow_n)
                    base, s, lo_u = U(lo * sw + off_w), U(sw), U(lo)
                    for oh in range(oh_n):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= h:
                            continue
                        src = x[n, c, ih]
                        dst = plane[oh]
                        if sw == 1:  # contiguous: vectorises
                            for q in range(U(hi - lo)):
                                dst[lo_u + q] += wv * src[base + q]
                        else:
                            for q in range(U(hi - lo)):
                                dst[lo_u + q] += wv * src[base + q * s]


@njit(**PARALLEL)
def direct_grad_input(gy, w, sh, sw, ph, pw, dh, dw, groups, gx):
    """gx[n,c] = sum over the outputs that read it; one task per input plane (its only writer)."""
    n_img, n_in, h, wd = gx.shape
    n_out, cg, kh, kw = w.shape
    og = n_out // groups
    oh_n, ow_n = gy.shape[2], gy.shape[3]
    zero = gx.dtype.type(0)
    for task in prange(n_img * n_in):
        n = task // n_in
        c = task - n * n_in
        g = c // cg
        ci = c - g * cg
        plane = gx[n, c]
        for a in range(h):
            for b in range(wd):
                plane[a, b] = zero
        for o in range(g * og, (g + 1) * og):
            for i in range(kh):
                for j in range(kw):
                    wv = w[o, ci, i, j]
                    off_w = j * dw - pw
                    lo, hi = valid_range(off_w, sw, wd, ow_n)
                    base, s, lo_u = U(lo * sw + off_w), U(sw), U(lo)
                    for oh in range(oh_n):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= h:
                            continue
                        src = gy[n, o, oh]
                        dst = plane[ih]
                        if sw == 1:
                            for q in range(U(hi - lo)):
                                dst[base + q] += wv * src[lo_u + q]
                        else:
                            for q in range(U(hi - lo)):
                                dst[base + q * s] += wv * src[lo_u + q]


@njit(**PARALLEL_SUMS)  # reassoc: vector sums
def direct_grad_weight(gy, x, sh, sw, ph, pw, dh, dw, groups, gw):
    """gw[o,ci,i,j] = sum_{n,oh,ow} gy[n,o,oh,ow] * x[n, c, ...]; one task per (o, ci)."""
    n_img, _, h, wd = x.shape
    n_out, cg, kh, kw = gw.shape
    og = n_out // groups
    oh_n, ow_n = gy.shape[2], gy.shape[3]
    for task in prange(n_out * cg):
        o = task // cg
        ci = task - o * cg
        c = (o // og) * cg + ci
        for i in range(kh):
            for j in range(kw):
                off_w = j * dw - pw
                lo, hi = valid_range(off_w, sw, wd, ow_n)
                base, s, lo_u = U(lo * sw + off_w), U(sw), U(lo)
                total = gw.dtype.type(0)
                for n in range(n_img):
                    part = gw.dtype.type(0)
                    for oh in range(oh_n):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= h:
                            continue
                        g_row = gy[n, o, oh]
                        x_row = x[n, c, ih]
                        acc = gw.dtype.type(0)  # a fresh accumulator per row vectorises
                        if sw == 1:
                            for q in range(U(hi - lo)):
                                acc += g_row[lo_u + q] * x_row[base + q]
                        else:
                            for q in range(U(hi - lo)):
                                acc += g_row[lo_u + q] * x_row[base + q * s]
                        part += acc
                    total += part
                gw[o, ci, i, j] = total


@njit(**PARALLEL_SUMS)
def bias_grad(gy, db):
    """db[o] = sum over n, p of gy[n, o, p] (gy viewed as N, C, L); blocked per image."""
    n_img, n_out, L = gy.shape
    for o in prange(n_out):
        total = gy.dtype.type(0)
        for n in range(n_img):
            part = gy.dtype.type(0)
            row = gy[n, o]
            for p in range(U(L)):
                part += row[p]
            total += part
        db[o] = total

