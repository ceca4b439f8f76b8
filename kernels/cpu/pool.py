"""Pooling (max, average, adaptive) and nearest upsampling on NCHW arrays, with gradients.

Every kernel runs one ``prange`` task per ``(n, c)`` plane: windows only ever touch their own
plane, so the backward scatters (``gx[plane][index] += ...``) have a single writer per plane and
need neither atomics nor partial buffers. Inputs are viewed as ``(N*C, H, W)``.
"""

import numpy as np
from numba import prange

from .jit import INLINE, PARALLEL, U, njit, valid_range

# Inner loops run over a whole output row with unsigned indices (jit.U): Numba guards signed
# indices against negative values, and those guards stop LLVM from vectorising.


@njit(**PARALLEL)
def max_pool2d(x, kh, kw, sh, sw, ph, pw, dh, dw, y, idx, n_tasks):
    """y = max over each (dilated) window; idx = flat index h*W+w of the maximum.

    Ties go to the first maximum in row-major window order; a NaN always wins (the last NaN of
    the window, as in PyTorch's CPU kernel). A window wholly inside the padding gives -inf and
    index -1 (it receives no gradient).

    Separable, per output row: a vertical pass takes the maximum (and its row) of each input
    column over the window's rows, then a horizontal pass picks, for all outputs of the row at
    once, the best of their ``kw`` columns. Both passes read memory contiguously and choose with
    branch-free selects, so they vectorise (a direct loop over strided windows with branches was
    8x slower at stride 2: random data mispredicts half of the comparisons).
    """
    planes, h, w = x.shape
    oh_n, ow_n = y.shape[1], y.shape[2]
    # one task per block of planes, so that the scratch rows are allocated once per task
    for task in prange(n_tasks):
        col_max = np.empty(w, dtype=x.dtype)
        col_row = np.empty(w, dtype=np.int64)
        n_phase = (w + sw - 1) // sw
        ph_max = np.empty((sw, n_phase), dtype=x.dtype)
        ph_row = np.full((sw, n_phase), -1, dtype=np.int64)
        best = np.empty(ow_n, dtype=x.dtype)
        best_row = np.empty(ow_n, dtype=np.int64)
        best_col = np.empty(ow_n, dtype=np.int64)
        for p in range(task * planes // n_tasks, (task + 1) * planes // n_tasks):
            for oh in range(oh_n):
                for q in range(U(w)):
                    col_max[q] = -np.inf
                    col_row[q] = -1
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= h:
                        continue
                    x_row = x[p, ih]
                    for q in range(U(w)):
                        v = x_row[q]
                        cur = col_max[q]
                        take = (v > cur) | (v != v) | (col_row[q] < 0)
                        col_max[q] = v if take else cur
                        col_row[q] = ih if take else col_row[q]
                # horizontal pass, vectorised over the outputs of the row: split the columns into
                # the ``sw`` phases of the stride so that every tap reads them contiguously
                for r in range(sw):
                    for t in range((w - r + sw - 1) // sw):
                        ph_max[r, t] = col_max[t * sw + r]
                        ph_row[r, t] = col_row[t * sw + r]
                for ow in range(U(ow_n)):
                    best[ow] = -np.inf
                    best_row[ow] = -1
                    best_col[ow] = -1
                for j in range(kw):
                    off = j * dw - pw
                    lo, hi = valid_range(off, sw, w, ow_n)
                    r = (lo * sw + off) % sw
                    t0 = U((lo * sw + off) // sw)
                    lo_u = U(lo)
                    for q in range(U(hi - lo)):
                        o = lo_u + q
                        v = ph_max[r, t0 + q]
                        rr = ph_row[r, t0 + q]
                        b = best[o]
                        bi = best_row[o]
                        # a NaN wins, the last one in row-major order (largest row, then column);
                        # otherwise the first maximum (smallest row, then column)
                        take_nan = (v != v) & ((b == b) | (rr >= bi))
                        first = (bi < 0) | (v > b) | ((v == b) & (rr < bi))
                        take_val = (v == v) & (b == b) & first
                        take = (take_nan | take_val) & (rr >= 0)
                        best[o] = v if take else b
                        best_row[o] = rr if take else bi
                        best_col[o] = np.int64(lo_u + q) * sw + off if take else best_col[o]
                for ow in range(ow_n):
                    y[p, oh, ow] = best[ow]
                    idx[p, oh, ow] = best_row[ow] * w + best_col[ow] if best_row[ow] >= 0 else -1


@njit(**PARALLEL)
def max_pool2d_2x2(x, y, idx, n_tasks):
    """max_pool2d with 2x2 windows at stride 2 (no padding, no dilation), the commonest
    pooling, with the same tie and NaN rules as :func:`max_pool2d`. A plain scalar loop with
    the window unrolled (LLVM turns its branches into selects) is 7x faster than the
    separable kernel at LeNet's sizes, whose rows are too short to vectorise well."""
    planes = x.shape[0]
    w = x.shape[2]
    oh_n, ow_n = y.shape[1], y.shape[2]
    for task in prange(n_tasks):
        for p in range(task * planes // n_tasks, (task + 1) * planes // n_tasks):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    ih, iw = 2 * oh, 2 * ow
                    a, b = x[p, ih, iw], x[p, ih, iw + 1]
                    c, d = x[p, ih + 1, iw], x[p, ih + 1, iw + 1]
                    best, at = a, ih * w + iw
                    # row-major order: a NaN wins (the last one), else a strictly larger value
                    if b > best or b != b:
                        best, at = b, ih * w + iw + 1
                    if c > best or c != c:
                        best, at = c, (ih + 1) * w + iw
                    if d > best or d != d:
                        best, at = d, (ih + 1) * w + iw + 1
                    y[p, oh, ow] = best
                    idx[p, oh, ow] = at


@njit(**PARALLEL)
def max_pool2d_backward(gy, idx, gx):
    """gx[plane].flat[idx] += gy: every window's gradient to the element it picked."""
    planes, h, w = gx.shape
    zero = gx.dtype.type(0)
    oh_n, ow_n = gy.shape[1], gy.shape[2]
    for p in prange(planes):
        flat = gx[p].reshape(h * w)
        for q in range(U(h * w)):
            flat[q] = zero
        g = gy[p].reshape(oh_n * ow_n)
        k = idx[p].reshape(oh_n * ow_n)
        for q in range(oh_n * ow_n):
            if k[q] >= 0:
                flat[k[q]] += g[q]


@njit(cache=True)
def _inverse_divisors(oh_n, ow_n, kh, kw, sh, sw, ph, pw, h, w, count_include_pad, divisor,
                      dtype_one):
    """1/divisor of every output window: ``divisor`` if not 0 (any sign, as PyTorch's
    divisor_override), else the window's size clipped
    to the padded input (count_include_pad) or to the input itself (0 for an empty window)."""
    inv = np.empty((oh_n, ow_n), dtype=np.asarray(dtype_one).dtype)
    for oh in range(oh_n):
        h0 = oh * sh - ph
        h1 = min(h0 + kh, h + ph)
        for ow in range(ow_n):
            w0 = ow * sw - pw
            w1 = min(w0 + kw, w + pw)
            if divisor != 0:
                d = divisor
            elif count_include_pad:
                d = (h1 - h0) * (w1 - w0)
            else:
                d = (min(h1, h) - max(h0, 0)) * (min(w1, w) - max(w0, 0))
            inv[oh, ow] = dtype_one / d if d != 0 else dtype_one * 0
    return inv


@njit(**PARALLEL)
def avg_pool2d(x, kh, kw, sh, sw, ph, pw, count_include_pad, divisor, y, n_tasks):
    """Mean over each window (see _inverse_divisors for the divisor). Separable: a contiguous
    vertical sum of the window's rows, then each output adds its ``kw`` columns, then one
    vectorised multiply by the precomputed inverse divisors."""
    planes, h, w = x.shape
    oh_n, ow_n = y.shape[1], y.shape[2]
    zero = y.dtype.type(0)
    inv = _inverse_divisors(oh_n, ow_n, kh, kw, sh, sw, ph, pw, h, w, count_include_pad,
                            divisor, y.dtype.type(1))
    for task in prange(n_tasks):  # scratch allocated once per task
        col_sum = np.empty(w, dtype=x.dtype)
        for p in range(task * planes // n_tasks, (task + 1) * planes // n_tasks):
            for oh in range(oh_n):
                for q in range(U(w)):
                    col_sum[q] = zero
                for i in range(kh):
                    ih = oh * sh - ph + i
                    if 0 <= ih < h:
                        x_row = x[p, ih]
                        for q in range(U(w)):
                            col_sum[q] += x_row[q]
                y_row = y[p, oh]
                for q in range(U(ow_n)):
                    y_row[q] = zero
                for j in range(kw):
                    lo, hi = valid_range(j - pw, sw, w, ow_n)
                    base, s, lo_u = U(lo * sw + j - pw), U(sw), U(lo)
                    for q in range(U(hi - lo)):
                        y_row[lo_u + q] += col_sum[base + q * s]
                inv_row = inv[oh]
                for q in range(U(ow_n)):
                    y_row[q] *= inv_row[q]


@njit(**PARALLEL)
def avg_pool2d_2x2(x, inv, y, n_tasks):
    """Mean of complete 2x2 windows at stride 2 (no padding), times ``inv`` (1/4, or
    1/divisor_override): the commonest average pooling, unrolled."""
    planes = x.shape[0]
    oh_n, ow_n = y.shape[1], y.shape[2]
    for task in prange(n_tasks):
        for p in range(task * planes // n_tasks, (task + 1) * planes // n_tasks):
            for oh in range(oh_n):
                r0, r1 = x[p, 2 * oh], x[p, 2 * oh + 1]
                out = y[p, oh]
                for ow in range(ow_n):
                    out[ow] = (r0[2 * ow] + r0[2 * ow + 1] + r1[2 * ow] + r1[2 * ow + 1]) * inv


@njit(**PARALLEL)
def avg_pool2d_2x2_backward(gy, inv, gx, n_tasks):
    """The adjoint of :func:`avg_pool2d_2x2`; rows and columns past the last window get 0."""
    planes, h, w = gx.shape
    oh_n, ow_n = gy.shape[1], gy.shape[2]
    zero = gx.dtype.type(0)
    for task in prange(n_tasks):
        for p in range(task * planes // n_tasks, (task + 1) * planes // n_tasks):
            for a in range(2 * oh_n, h):
                for b in range(w):
                    gx[p, a, b] = zero
            for oh in range(oh_n):
                g = gy[p, oh]
                r0, r1 = gx[p, 2 * oh], gx[p, 2 * oh + 1]
                for ow in range(ow_n):
                    v = g[ow] * inv
                    r0[2 * ow] = v
                    r0[2 * ow + 1] = v
                    r1[2 * ow] = v
                    r1[2 * ow + 1] = v
                for b in range(2 * ow_n, w):
                    r0[b] = zero
                    r1[b] = zero


@njit(**PARALLEL)
def avg_pool2d_backward(gy, kh, kw, sh, sw, ph, pw, count_include_pad, divisor, gx,
                        n_tasks):
    """The adjoint, also separable: scale a row of gy by the inverse divisors, spread it over
    the window columns into one row, then add that row to each of the window's input rows."""
    planes, h, w = gx.shape
    oh_n, ow_n = gy.shape[1], gy.shape[2]
    zero = gx.dtype.type(0)
    inv = _inverse_divisors(oh_n, ow_n, kh, kw, sh, sw, ph, pw, h, w, count_include_pad,
                            divisor, gx.dtype.type(1))
    for task in prange(n_tasks):  # scratch allocated once per task
        row = np.empty(w, dtype=gx.dtype)
        scaled = np.empty(ow_n, dtype=gx.dtype)
        for p in range(task * planes // n_tasks, (task + 1) * planes // n_tasks):
            flat = gx[p].reshape(h * w)
            for q in range(U(h * w)):
                flat[q] = zero
            for oh in range(oh_n):
                g_in = gy[p, oh]
                inv_row = inv[oh]
                for q in range(U(ow_n)):
                    scaled[q] = g_in[q] * inv_row[q]
                for q in range(U(w)):
                    row[q] = zero
                for j in range(kw):
                    lo, hi = valid_range(j - pw, sw, w, ow_n)
                    base, s, lo_u = U(lo * sw + j - pw), U(sw), U(lo)
                    for q in range(U(hi - lo)):
                        row[base + q * s] += scaled[lo_u + q]
                for i in range(kh):
                    ih = oh * sh - ph + i
                    if 0 <= ih < h:
                        g_row = gx[p, ih]
                        for q in range(U(w)):
                            g_row[q] += row[q]


@njit(**INLINE)
def _adaptive_bounds(o, n_in, n_out):
    return (o * n_in) // n_out, ((o + 1) * n_in + n_out - 1) // n_out


@njit(**PARALLEL)
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


@njit(**PARALLEL)
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


@njit(**PARALLEL)
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


@njit(**INLINE)
def _nearest_src(o, scale, n_in):
    s = int(np.floor(np.float32(o) * scale))  # float32 arithmetic, as PyTorch's floorf
    return s if s < n_in else n_in - 1


@njit(**PARALLEL)
def upsample_nearest2d(x, scale_h, scale_w, y):
    """y[p, oh, ow] = x[p, floor(oh*scale_h), floor(ow*scale_w)] (PyTorch's 'nearest')."""
    planes, h, w = x.shape
    oh_n, ow_n = y.shape[1], y.shape[2]
    for p in prange(planes):
        for oh in range(oh_n):
            ih = _nearest_src(oh, scale_h, h)
            for ow in range(ow_n):
                y[p, oh, ow] = x[p, ih, _nearest_src(ow, scale_w, w)]


@njit(**PARALLEL)
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
