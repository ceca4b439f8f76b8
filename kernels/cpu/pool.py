"""Pooling (max, average, adaptive) and nearest upsampling on NCHW arrays, with gradients.

Every kernel runs one ``prange`` task per ``(n, c)`` plane: windows only ever touch their own
plane, so the backward scatters (``gx[plane][index] += ...``) have a single writer per plane and
need neither atomics nor partial buffers. Inputs are viewed as ``(N*C, H, W)``.
"""

import numpy as np
from numba import njit, prange

_opts = dict(parallel=True, cache=True, fastmath={"contract"})


@njit(**_opts)
def max_pool2d(x, kh, kw, sh, sw, ph, pw, dh, dw, y, idx):
    """y = max over each (dilated) window; idx = flat index h*W+w of its first maximum.

    Padding counts as -inf. A NaN wins (the last NaN of a window, as in PyTorch's CPU kernel).
    """
    planes, h, w = x.shape
    oh_n, ow_n = y.shape[1], y.shape[2]
    for p in prange(planes):
        for oh in range(oh_n):
            h0 = oh * sh - ph
            for ow in range(ow_n):
                w0 = ow * sw - pw
                best = -np.inf
                bi = -1
                for i in range(kh):
                    ih = h0 + i * dh
                    if ih < 0 or ih >= h:
                        continue
                    for j in range(kw):
                        iw = w0 + j * dw
                        if iw < 0 or iw >= w:
                            continue
                        v = x[p, ih, iw]
                        if bi < 0 or v > best or v != v:
                            best = v
                            bi = ih * w + iw
                y[p, oh, ow] = best
                idx[p, oh, ow] = bi


@njit(**_opts)
def max_pool2d_backward(gy, idx, gx):
    """gx[plane].flat[idx] += gy: every window's gradient to the element it picked."""
    planes, h, w = gx.shape
    zero = gx.dtype.type(0)
    oh_n, ow_n = gy.shape[1], gy.shape[2]
    for p in prange(planes):
        for a in range(h):
            for b in range(w):
                gx[p, a, b] = zero
        for oh in range(oh_n):
            for ow in range(ow_n):
                k = idx[p, oh, ow]
                if k >= 0:
                    gx[p, k // w, k % w] += gy[p, oh, ow]


@njit(cache=True, inline="always")
def _avg_window(o, s, pad, k, size):
    """(start, end) of the window clipped to the input, and its size clipped to the padded input."""
    start = o * s - pad
    end = start + k
    if end > size + pad:
        end = size + pad
    padded = end - start
    if start < 0:
        start = 0
    if end > size:
        end = size
    return start, end, padded


@njit(**_opts)
def avg_pool2d(x, kh, kw, sh, sw, ph, pw, count_include_pad, divisor, y):
    """Mean over each window: divisor if > 0, else the padded or the unpadded window size."""
    planes, h, w = x.shape
    oh_n, ow_n = y.shape[1], y.shape[2]
    for p in prange(planes):
        for oh in range(oh_n):
            h0, h1, hp = _avg_window(oh, sh, ph, kh, h)
            for ow in range(ow_n):
                w0, w1, wp = _avg_window(ow, sw, pw, kw, w)
                s = y.dtype.type(0)
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        s += x[p, ih, iw]
                if divisor > 0:
                    d = divisor
                elif count_include_pad:
                    d = hp * wp
                else:
                    d = (h1 - h0) * (w1 - w0)
                y[p, oh, ow] = s / y.dtype.type(d) if d > 0 else y.dtype.type(0)


@njit(**_opts)
def avg_pool2d_backward(gy, kh, kw, sh, sw, ph, pw, count_include_pad, divisor, gx):
    planes, h, w = gx.shape
    oh_n, ow_n = gy.shape[1], gy.shape[2]
    zero = gx.dtype.type(0)
    for p in prange(planes):
        for a in range(h):
            for b in range(w):
                gx[p, a, b] = zero
        for oh in range(oh_n):
            h0, h1, hp = _avg_window(oh, sh, ph, kh, h)
            for ow in range(ow_n):
                w0, w1, wp = _avg_window(ow, sw, pw, kw, w)
                if divisor > 0:
                    d = divisor
                elif count_include_pad:
                    d = hp * wp
                else:
                    d = (h1 - h0) * (w1 - w0)
                if d == 0:
                    continue
                g = gy[p, oh, ow] / gx.dtype.type(d)
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        gx[p, ih, iw] += g


@njit(cache=True, inline="always")
def _adaptive_bounds(o, n_in, n_out):
    return (o * n_in) // n_out, ((o + 1) * n_in + n_out - 1) // n_out


@njit(**_opts)
def adaptive_avg_pool2d(x, y):
    """PyTorch's adaptive windows: [floor(o*H/OH), ceil((o+1)*H/OH))."""
    planes, h, w = x.shape
    oh_n, ow_n = y.shape[1], y.shape[2]
    for p in prange(planes):
        for oh in range(oh_n):
            h0, h1 = _adaptive_bounds(oh, h, oh_n)
            for ow in range(ow_n):
                w0, w1 = _adaptive_bounds(ow, w, ow_n)
                s = y.dtype.type(0)
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        s += x[p, ih, iw]
                y[p, oh, ow] = s / y.dtype.type((h1 - h0) * (w1 - w0))


@njit(**_opts)
def adaptive_avg_pool2d_backward(gy, gx):
    planes, h, w = gx.shape
    oh_n, ow_n = gy.shape[1], gy.shape[2]
    zero = gx.dtype.type(0)
    for p in prange(planes):
        for a in range(h):
            for b in range(w):
                gx[p, a, b] = zero
        for oh in range(oh_n):
            h0, h1 = _adaptive_bounds(oh, h, oh_n)
            for ow in range(ow_n):
                w0, w1 = _adaptive_bounds(ow, w, ow_n)
                g = gy[p, oh, ow] / gx.dtype.type((h1 - h0) * (w1 - w0))
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        gx[p, ih, iw] += g


@njit(**_opts)
def adaptive_max_pool2d(x, y, idx):
    planes, h, w = x.shape
    oh_n, ow_n = y.shape[1], y.shape[2]
    for p in prange(planes):
        for oh in range(oh_n):
            h0, h1 = _adaptive_bounds(oh, h, oh_n)
            for ow in range(ow_n):
                w0, w1 = _adaptive_bounds(ow, w, ow_n)
                best = -np.inf
                bi = h0 * w + w0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        v = x[p, ih, iw]
                        if v > best or v != v:
                            best = v
                            bi = ih * w + iw
                y[p, oh, ow] = best
                idx[p, oh, ow] = bi


@njit(cache=True, inline="always")
def _nearest_src(o, scale, n_in):
    s = int(np.floor(np.float32(o) * scale))  # float32 arithmetic, as PyTorch's floorf
    return s if s < n_in else n_in - 1


@njit(**_opts)
def upsample_nearest2d(x, scale_h, scale_w, y):
    """y[p, oh, ow] = x[p, floor(oh*scale_h), floor(ow*scale_w)] (PyTorch's 'nearest')."""
    planes, h, w = x.shape
    oh_n, ow_n = y.shape[1], y.shape[2]
    for p in prange(planes):
        for oh in range(oh_n):
            ih = _nearest_src(oh, scale_h, h)
            for ow in range(ow_n):
                y[p, oh, ow] = x[p, ih, _nearest_src(ow, scale_w, w)]


@njit(**_opts)
def upsample_nearest2d_backward(gy, scale_h, scale_w, gx):
    planes, h, w = gx.shape
    oh_n, ow_n = gy.shape[1], gy.shape[2]
    zero = gx.dtype.type(0)
    for p in prange(planes):
        for a in range(h):
            for b in range(w):
                gx[p, a, b] = zero
        for oh in range(oh_n):
            ih = _nearest_src(oh, scale_h, h)
            for ow in range(ow_n):
                gx[p, ih, _nearest_src(ow, scale_w, w)] += gy[p, oh, ow]
