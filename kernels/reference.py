"""Slow, obviously-correct NumPy versions of every kernel: the oracle of the tests.

Written for clarity, not speed: each function is the textbook definition (a loop over kernel
taps or output windows), with no shared code with the optimised kernels. Arguments are already
normalised pairs; arrays are NCHW.
"""

from __future__ import annotations

import numpy as np


def out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def pool_out_size(size, k, s, p, d, ceil_mode):
    num = size + 2 * p - d * (k - 1) - 1
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pad(x, ph, pw, value=0.0):
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def conv2d(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh, ow = out_size(h, kh, sh, ph, dh), out_size(wd, kw, sw, pw, dw)
    xp = _pad(x, ph, pw)
    og = o // groups
    y = np.zeros((n, o, oh, ow), dtype=np.float64)
    for g in range(groups):
        xg = xp[:, g * cg:(g + 1) * cg].astype(np.float64)
        wg = w[g * og:(g + 1) * og].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                           j * dw:j * dw + sw * (ow - 1) + 1:sw]
                y[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y.astype(x.dtype)


def conv2d_grad_input(gy, w, x_shape, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                      groups=1):
    n, c, h, wd = x_shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh, ow = gy.shape[2:]
    og = o // groups
    gxp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=np.float64)
    for g in range(groups):
        gyg = gy[:, g * og:(g + 1) * og].astype(np.float64)
        wg = w[g * og:(g + 1) * og].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                gxp[:, g * cg:(g + 1) * cg, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                    j * dw:j * dw + sw * (ow - 1) + 1:sw] += np.einsum(
                        "nohw,oc->nchw", gyg, wg[:, :, i, j])
    return gxp[:, :, ph:ph + h, pw:pw + wd].astype(gy.dtype)


def conv2d_grad_weight(gy, x, w_shape, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                       groups=1):
    o, cg, kh, kw = w_shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh, ow = gy.shape[2:]
    xp = _pad(x, ph, pw).astype(np.float64)
    og = o // groups
    gw = np.zeros(w_shape, dtype=np.float64)
    for g in range(groups):
        gyg = gy[:, g * og:(g + 1) * og].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                           j * dw:j * dw + sw * (ow - 1) + 1:sw]
                gw[g * og:(g + 1) * og, :, i, j] = np.einsum("nohw,nchw->oc", gyg, patch)
    return gw.astype(gy.dtype)


def conv_transpose2d(x, w, b=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0),
                     groups=1, dilation=(1, 1)):
    """Scatter definition: every input pixel adds w * x into its output window."""
    n, c_in, h, wd = x.shape
    _, cg_out, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw), (oph, opw) = stride, padding, dilation, output_padding
    oh = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    ow = (wd - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    cg_in = c_in // groups
    full = np.zeros((n, cg_out * groups, oh + 2 * ph + sh + dh * kh, ow + 2 * pw + sw + dw * kw))
    for g in range(groups):
        xg = x[:, g * cg_in:(g + 1) * cg_in].astype(np.float64)
        wg = w[g * cg_in:(g + 1) * cg_in].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                full[:, g * cg_out:(g + 1) * cg_out, i * dh:i * dh + sh * (h - 1) + 1:sh,
                     j * dw:j * dw + sw * (wd - 1) + 1:sw] += np.einsum(
                         "nchw,co->nohw", xg, wg[:, :, i, j])
    y = full[:, :, ph:ph + oh, pw:pw + ow]
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    return y.astype(x.dtype)


def max_pool2d(x, kernel, stride, padding=(0, 0), dilation=(1, 1), ceil_mode=False):
    """Values and flat (h*W + w) indices of the first maximum of each window; NaN wins."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    oh = pool_out_size(h, kh, sh, ph, dh, ceil_mode)
    ow = pool_out_size(w, kw, sw, pw, dw, ceil_mode)
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    idx = np.empty((n, c, oh, ow), dtype=np.int64)
    for a in range(oh):
        for b in range(ow):
            rows = [a * sh - ph + i * dh for i in range(kh)]
            cols = [b * sw - pw + j * dw for j in range(kw)]
            pos = [(r, q) for r in rows for q in cols if 0 <= r < h and 0 <= q < w]
            if not pos:  # a dilated window wholly in the padding: -inf, no gradient (-1)
                y[:, :, a, b], idx[:, :, a, b] = -np.inf, -1
                continue
            vals = np.stack([x[:, :, r, q] for r, q in pos], axis=-1)
            flat = np.array([r * w + q for r, q in pos])
            nan = np.isnan(vals)
            # last NaN if any (PyTorch's CPU rule), else the first maximum
            last_nan = vals.shape[-1] - 1 - np.argmax(nan[..., ::-1], axis=-1)
            first_max = np.argmax(np.where(nan, -np.inf, vals), axis=-1)
            k = np.where(nan.any(axis=-1), last_nan, first_max)
            idx[:, :, a, b] = flat[k]
            y[:, :, a, b] = np.take_along_axis(vals, k[..., None], axis=-1)[..., 0]
    return y, idx


def max_pool2d_grad(gy, idx, x_shape):
    n, c, h, w = x_shape
    gx = np.zeros((n * c, h * w), dtype=gy.dtype)
    g2, i2 = gy.reshape(n * c, -1), idx.reshape(n * c, -1)
    for p in range(n * c):
        keep = i2[p] >= 0
        np.add.at(gx[p], i2[p][keep], g2[p][keep])
    return gx.reshape(x_shape)


def avg_pool2d(x, kernel, stride, padding=(0, 0), ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh = pool_out_size(h, kh, sh, ph, 1, ceil_mode)
    ow = pool_out_size(w, kw, sw, pw, 1, ceil_mode)
    y = np.zeros((n, c, oh, ow), dtype=np.float64)
    for a in range(oh):
        for b in range(ow):
            h0, w0 = a * sh - ph, b * sw - pw
            h1, w1 = min(h0 + kh, h + ph), min(w0 + kw, w + pw)
            pool_size = (h1 - h0) * (w1 - w0)
            hs, ws, he, we = max(h0, 0), max(w0, 0), min(h1, h), min(w1, w)
            s = x[:, :, hs:he, ws:we].astype(np.float64).sum(axis=(2, 3))
            if divisor_override:
                d = divisor_override
            elif count_include_pad:
                d = pool_size
            else:
                d = (he - hs) * (we - ws)
            y[:, :, a, b] = s / d
    return y.astype(x.dtype)


def adaptive_avg_pool2d(x, out_hw):
    n, c, h, w = x.shape
    oh, ow = out_hw
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    for a in range(oh):
        h0, h1 = (a * h) // oh, -(-((a + 1) * h) // oh)
        for b in range(ow):
            w0, w1 = (b * w) // ow, -(-((b + 1) * w) // ow)
            y[:, :, a, b] = x[:, :, h0:h1, w0:w1].astype(np.float64).mean(axis=(2, 3))
    return y


def adaptive_max_pool2d(x, out_hw):
    n, c, h, w = x.shape
    oh, ow = out_hw
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    for a in range(oh):
        h0, h1 = (a * h) // oh, -(-((a + 1) * h) // oh)
        for b in range(ow):
            w0, w1 = (b * w) // ow, -(-((b + 1) * w) // ow)
            y[:, :, a, b] = x[:, :, h0:h1, w0:w1].max(axis=(2, 3))
    return y


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """PyTorch's definition: alpha times the mean of squares over a zero-padded channel window."""
    x64 = x.astype(np.float64)
    c = x.shape[1]
    n, rest = x.shape[0], x.shape[2:]
    sq = np.concatenate([np.zeros((n, size // 2) + rest), x64 ** 2,
                         np.zeros((n, (size - 1) // 2) + rest)], axis=1)
    window = sum(sq[:, i:i + c] for i in range(size))
    return (x64 / (k + alpha * window / size) ** beta).astype(x.dtype)


def upsample_nearest2d(x, out_hw, scales):
    h, w = x.shape[2:]
    rows = np.minimum(np.floor(np.arange(out_hw[0], dtype=np.float32) * np.float32(scales[0]))
                      .astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(out_hw[1], dtype=np.float32) * np.float32(scales[1]))
                      .astype(np.int64), w - 1)
    return x[:, :, rows][:, :, :, cols]
