"""2-D convolution (cross-correlation, NCHW) and its gradients on the CPU.

Two strategies, chosen per call by :func:`conv2d_forward` / :func:`conv2d_backward`:

* **im2col + BLAS** (``groups`` with many channels per group): pack every receptive field into
  the columns of a ``(C_g*kH*kW, N*H_out*W_out)`` matrix with a parallel Numba kernel, then one
  NumPy ``sgemm`` per group. Backward multiplies by the transposed operands and scatters the
  column gradient back with :func:`col2im`, parallel over ``(n, c)`` planes so that every plane
  has exactly one writer.
* **direct loops** (depthwise and other thin groups, where a GEMM would be tiny): one ``prange``
  task per output plane (forward), per input plane (input gradient) or per filter slice
  (weight gradient), so each task owns what it writes.

Scratch matrices are reused between calls (page faults on fresh buffers cost more than the
packing itself). Shapes, strides, padding and dilation arrive already validated.
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit, prange

_opts = dict(parallel=True, cache=True, fastmath={"contract"})


# ---------------------------------------------------------------------- helpers
@njit(cache=True, inline="always")
def _valid_range(off, stride, size, n_out):
    """[lo, hi): the outputs o with 0 <= o*stride + off < size."""
    lo = 0
    if off < 0:
        lo = (-off + stride - 1) // stride
    hi = (size - off + stride - 1) // stride
    if hi > n_out:
        hi = n_out
    if hi < lo:
        hi = lo
    if lo > n_out:
        lo = n_out
        hi = n_out
    return lo, hi


@njit(**_opts)
def im2col(x, c0, cg, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, cols):
    """cols[(c*kh+i)*kw+j, n*L + oh*W_out + ow] = x[n, c0+c, oh*sh-ph+i*dh, ow*sw-pw+j*dw].

    Zero outside the input. One task per (row, image) pair.
    """
    n_img, _, h, w = x.shape
    L = oh_n * ow_n
    zero = cols.dtype.type(0)
    kk = kh * kw
    for task in prange(cg * kk * n_img):
        r = task // n_img
        n = task - r * n_img
        c = r // kk
        i = (r - c * kk) // kw
        j = r - c * kk - i * kw
        off_w = j * dw - pw
        lo, hi = _valid_range(off_w, sw, w, ow_n)
        base = n * L
        for oh in range(oh_n):
            ih = oh * sh - ph + i * dh
            dst = base + oh * ow_n
            if ih < 0 or ih >= h:
                for ow in range(ow_n):
                    cols[r, dst + ow] = zero
            else:
                for ow in range(lo):
                    cols[r, dst + ow] = zero
                for ow in range(lo, hi):
                    cols[r, dst + ow] = x[n, c0 + c, ih, ow * sw + off_w]
                for ow in range(hi, ow_n):
                    cols[r, dst + ow] = zero


@njit(**_opts)
def col2im(cols, c0, cg, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, gx):
    """The adjoint of im2col: gx[n, c0+c] = sum of the columns that read it. One task per plane."""
    n_img, _, h, w = gx.shape
    L = oh_n * ow_n
    zero = gx.dtype.type(0)
    for task in prange(n_img * cg):
        n = task // cg
        c = task - n * cg
        plane = gx[n, c0 + c]
        for a in range(h):
            for b in range(w):
                plane[a, b] = zero
        base = n * L
        for i in range(kh):
            for j in range(kw):
                r = (c * kh + i) * kw + j
                off_w = j * dw - pw
                lo, hi = _valid_range(off_w, sw, w, ow_n)
                for oh in range(oh_n):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= h:
                        continue
                    src = base + oh * ow_n
                    for ow in range(lo, hi):
                        plane[ih, ow * sw + off_w] += cols[r, src + ow]


@njit(**_opts)
def gemm_to_nchw(tmp, o0, bias, has_bias, y):
    """y[n, o0+o, :] = tmp[o, n*L:(n+1)*L] (+ bias[o0+o]): the GEMM result back to NCHW."""
    n_img, _, L = y.shape
    og = tmp.shape[0]
    for task in prange(n_img * og):
        n = task // og
        o = task - n * og
        bv = bias[o0 + o] if has_bias else y.dtype.type(0)
        src = n * L
        for p in range(L):
            y[n, o0 + o, p] = tmp[o, src + p] + bv


@njit(**_opts)
def nchw_to_gemm(gy, o0, out, db, want_bias):
    """out[o, n*L + p] = gy[n, o0+o, p]; db[o0+o] = sum over n, p (blocked per image)."""
    n_img, _, L = gy.shape
    og = out.shape[0]
    for o in prange(og):
        total = gy.dtype.type(0)
        for n in range(n_img):
            part = gy.dtype.type(0)
            dst = n * L
            for p in range(L):
                v = gy[n, o0 + o, p]
                out[o, dst + p] = v
                part += v
            total += part
        if want_bias:
            db[o0 + o] = total


@njit(**_opts)
def bias_grad(gy, db):
    """db[o] = sum over n, p of gy[n, o, p] (gy viewed as N, C, L); blocked per image."""
    n_img, n_out, L = gy.shape
    for o in prange(n_out):
        total = gy.dtype.type(0)
        for n in range(n_img):
            part = gy.dtype.type(0)
            for p in range(L):
                part += gy[n, o, p]
            total += part
        db[o] = total


# ---------------------------------------------------------------------- direct kernels
@njit(**_opts)
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
                    lo, hi = _valid_range(off_w, sw, wd, ow_n)
                    for oh in range(oh_n):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= h:
                            continue
                        for ow in range(lo, hi):
                            plane[oh, ow] += wv * x[n, c, ih, ow * sw + off_w]


@njit(**_opts)
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
                    lo, hi = _valid_range(off_w, sw, wd, ow_n)
                    for oh in range(oh_n):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= h:
                            continue
                        for ow in range(lo, hi):
                            plane[ih, ow * sw + off_w] += wv * gy[n, o, oh, ow]


@njit(**_opts)
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
                lo, hi = _valid_range(off_w, sw, wd, ow_n)
                total = gw.dtype.type(0)
                for n in range(n_img):
                    part = gw.dtype.type(0)
                    for oh in range(oh_n):
                        ih = oh * sh - ph + i * dh
                        if ih < 0 or ih >= h:
                            continue
                        for ow in range(lo, hi):
                            part += gy[n, o, oh, ow] * x[n, c, ih, ow * sw + off_w]
                    total += part
                gw[o, ci, i, j] = total


# ---------------------------------------------------------------------- orchestration
class _Workspace(threading.local):
    """Grow-only scratch buffers, one set per thread, reused across calls."""

    def __init__(self):
        self.buffers = {}

    def get(self, name, shape, dtype):
        n = int(np.prod(shape))
        buf = self.buffers.get((name, dtype))
        if buf is None or buf.size < n:
            buf = np.empty(max(n, 1), dtype=dtype)
            self.buffers[(name, dtype)] = buf
        return buf[:n].reshape(shape)

    def clear(self):
        self.buffers.clear()


workspace = _Workspace()


def output_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _use_direct(cg, og, kh, kw):
    """Thin groups make GEMMs too small to pay for packing: loop directly."""
    return cg * kh * kw <= 16 and og <= 4 or cg == 1 and og <= 8


def conv2d_forward(x, w, b, stride, padding, dilation, groups):
    """y = conv2d(x, w) + b for NCHW ``x`` and ``w`` of shape (O, C/groups, kH, kW)."""
    n_img, _, h, wd = x.shape
    n_out, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh_n, ow_n = output_size(h, kh, sh, ph, dh), output_size(wd, kw, sw, pw, dw)
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w)
    has_bias = b is not None
    bias = np.ascontiguousarray(b) if has_bias else np.zeros(1, x.dtype)
    og = n_out // groups
    y = np.empty((n_img, n_out, oh_n, ow_n), dtype=x.dtype)
    if y.size == 0:
        return y
    if _use_direct(cg, og, kh, kw):
        direct_forward(x, w, bias, has_bias, sh, sw, ph, pw, dh, dw, groups, y)
        return y
    L = oh_n * ow_n
    y3 = y.reshape(n_img, n_out, L)
    if kh == kw == 1 and sh == sw == 1 and ph == pw == 0 and groups == 1:
        np.matmul(w.reshape(n_out, cg), x.reshape(n_img, cg, L), out=y3)
        if has_bias:
            y3 += bias.reshape(1, n_out, 1)
        return y
    cols = workspace.get("cols", (cg * kh * kw, n_img * L), x.dtype)
    tmp = workspace.get("gemm", (og, n_img * L), x.dtype)
    w2 = w.reshape(n_out, cg * kh * kw)
    for g in range(groups):
        im2col(x, g * cg, cg, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, cols)
        np.matmul(w2[g * og:(g + 1) * og], cols, out=tmp)
        gemm_to_nchw(tmp, g * og, bias, has_bias, y3)
    return y


def conv2d_backward(gy, x, w, stride, padding, dilation, groups, need_input, need_weight,
                    need_bias, x_shape=None):
    """(grad_input, grad_weight, grad_bias) of conv2d; ``x`` may be None if no weight grad."""
    gy = np.ascontiguousarray(gy)
    w = np.ascontiguousarray(w)
    n_out, cg, kh, kw = w.shape
    if x is not None:
        x = np.ascontiguousarray(x)
        x_shape = x.shape
    n_img, _, h, wd = x_shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh_n, ow_n = gy.shape[2], gy.shape[3]
    og = n_out // groups
    L = oh_n * ow_n
    dtype = gy.dtype
    gx = np.empty(x_shape, dtype=dtype) if need_input else None
    gw = np.empty(w.shape, dtype=dtype) if need_weight else None
    gb = np.empty(n_out, dtype=dtype) if need_bias else None
    gy3 = gy.reshape(n_img, n_out, L)
    if gy.size == 0 or n_img == 0:
        for a in (gx, gw, gb):
            if a is not None:
                a[...] = 0
        return gx, gw, gb
    if _use_direct(cg, og, kh, kw):
        if need_bias:
            bias_grad(gy3, gb)
        if need_input:
            direct_grad_input(gy, w, sh, sw, ph, pw, dh, dw, groups, gx)
        if need_weight:
            direct_grad_weight(gy, x, sh, sw, ph, pw, dh, dw, groups, gw)
        return gx, gw, gb
    if kh == kw == 1 and sh == sw == 1 and ph == pw == 0 and groups == 1:
        if need_bias:
            bias_grad(gy3, gb)
        if need_input:
            np.matmul(w.reshape(n_out, cg).T, gy3, out=gx.reshape(n_img, cg, L))
        if need_weight:
            gw[...] = np.tensordot(gy3, x.reshape(n_img, cg, L), axes=([0, 2], [0, 2])).reshape(
                gw.shape)
        return gx, gw, gb
    kk = cg * kh * kw
    w2 = w.reshape(n_out, kk)
    gyt = workspace.get("gemm", (og, n_img * L), dtype)
    gw2 = gw.reshape(n_out, kk) if need_weight else None
    db = gb if need_bias else np.zeros(1, dtype)
    for g in range(groups):
        nchw_to_gemm(gy3, g * og, gyt, db, need_bias)
        if need_weight:
            cols = workspace.get("cols", (kk, n_img * L), dtype)
            im2col(x, g * cg, cg, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, cols)
            np.matmul(gyt, cols.T, out=gw2[g * og:(g + 1) * og])
        if need_input:
            gcols = workspace.get("cols", (kk, n_img * L), dtype)
            np.matmul(w2[g * og:(g + 1) * og].T, gyt, out=gcols)
            col2im(gcols, g * cg, cg, kh, kw, sh, sw, ph, pw, dh, dw, oh_n, ow_n, gx)
    return gx, gw, gb
