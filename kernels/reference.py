"""Slow, obviously-correct NumPy versions of every kernel: the oracle of the tests (convolution,
pooling, LRN, upsampling, BatchNorm, softmax, the losses and the optimizer updates).

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


# ------------------------------------------------------------------ normalisation


def batch_norm_train(x, weight, bias, eps=1e-5):
    """Training-mode BatchNorm over dims (0, 2, 3, ...): (y, batch mean, biased variance)."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes)
    var = ((x - mean.reshape(shape)) ** 2).mean(axis=axes)
    x_hat = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    return x_hat * weight.reshape(shape) + bias.reshape(shape), mean, var


def batch_norm_eval(x, running_mean, running_var, weight, bias, eps=1e-5):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    x_hat = (x - running_mean.reshape(shape)) / np.sqrt(running_var.reshape(shape) + eps)
    return x_hat * weight.reshape(shape) + bias.reshape(shape)


def batch_norm_train_grad(gy, x, weight, eps=1e-5):
    """(dx, dweight, dbias) of training-mode BatchNorm, the statistics differentiated too:
    dx = w / sqrt(var + eps) * (dy - mean(dy) - x_hat * mean(dy * x_hat))."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes)
    var = ((x - mean.reshape(shape)) ** 2).mean(axis=axes)
    inv = 1.0 / np.sqrt(var + eps)
    x_hat = (x - mean.reshape(shape)) * inv.reshape(shape)
    m_dy = gy.mean(axis=axes).reshape(shape)
    m_dy_xhat = (gy * x_hat).mean(axis=axes).reshape(shape)
    gx = (weight * inv).reshape(shape) * (gy - m_dy - x_hat * m_dy_xhat)
    return gx, (gy * x_hat).sum(axis=axes), gy.sum(axis=axes)


def running_stats_update(running_mean, running_var, mean, var, count, momentum=0.1):
    """PyTorch's update: the running variance takes the unbiased batch variance."""
    return ((1 - momentum) * running_mean + momentum * mean,
            (1 - momentum) * running_var + momentum * var * count / (count - 1))


# ------------------------------------------------------------------ softmax


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax_grad(gy, y, axis=-1):
    """Of y = softmax(x): dx = y * (dy - sum(dy * y))."""
    return y * (gy - (gy * y).sum(axis=axis, keepdims=True))


def log_softmax_grad(gy, y, axis=-1):
    """Of y = log_softmax(x): dx = dy - exp(y) * sum(dy)."""
    return gy - np.exp(y) * gy.sum(axis=axis, keepdims=True)


# ------------------------------------------------------------------ losses


def nll_loss(logp, target, weight=None, ignore_index=-100, reduction="mean"):
    """PyTorch's NLLLoss for (N, C) log-probabilities: -w[t_i] * logp[i, t_i] per row; the mean
    divides by the summed weights of the rows not ignored."""
    n, c = logp.shape
    w = np.ones(c, logp.dtype) if weight is None else weight
    rows = np.zeros(n, np.float64)
    row_w = np.zeros(n, np.float64)
    for i in range(n):
        if target[i] == ignore_index:
            continue
        row_w[i] = w[target[i]]
        rows[i] = -row_w[i] * logp[i, target[i]]
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / row_w.sum()


def cross_entropy(logits, target, weight=None, ignore_index=-100, label_smoothing=0.0,
                  reduction="mean"):
    """PyTorch's CrossEntropyLoss with class weights and label smoothing: each row's loss is
    (1 - s) * nll + s * mean over classes of -w[c] * logp[c]; the mean divides by the summed
    weights of the targets not ignored."""
    n, c = logits.shape
    logp = log_softmax(logits.astype(np.float64), axis=1)
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    rows = np.zeros(n)
    denom = 0.0
    for i in range(n):
        if target[i] == ignore_index:
            continue
        denom += w[target[i]]
        nll = -w[target[i]] * logp[i, target[i]]
        smooth = -(w * logp[i]).sum() / c
        rows[i] = (1 - label_smoothing) * nll + label_smoothing * smooth
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / denom


def cross_entropy_grad(logits, target, weight=None, ignore_index=-100, label_smoothing=0.0):
    """d(mean cross-entropy)/d(logits), written out: per row, for q the smoothed, weighted
    target distribution, dL/dz = (sum(q) * softmax(z) - q) / (summed target weights)."""
    n, c = logits.shape
    p = softmax(logits.astype(np.float64), axis=1)
    w = np.ones(c) if weight is None else np.asarray(weight, np.float64)
    g = np.zeros((n, c))
    denom = 0.0
    for i in range(n):
        if target[i] == ignore_index:
            continue
        denom += w[target[i]]
        q = label_smoothing * w / c
        q[target[i]] += (1 - label_smoothing) * w[target[i]]
        g[i] = q.sum() * p[i] - q
    return g / denom if denom else g


def mse_loss(x, y, reduction="mean"):
    d = (x - y) ** 2
    return d if reduction == "none" else d.sum() if reduction == "sum" else d.mean()


# ------------------------------------------------------------------ optimizer updates


def sgd_step(p, g, buf, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
    """One torch.optim.SGD step; ``buf`` None before the first. Returns (p, buf)."""
    g = g + weight_decay * p
    if momentum:
        buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    return p - lr * g, buf


def adam_step(p, g, m, v, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
              decoupled=False, vmax=None):
    """One torch.optim.Adam (or, ``decoupled``, AdamW) step number ``step`` (from 1), with
    AMSGrad where ``vmax`` is given. Returns (p, m, v, vmax)."""
    b1, b2 = betas
    if decoupled:
        p = p * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    denom_v = v
    if vmax is not None:
        vmax = np.maximum(vmax, v)
        denom_v = vmax
    m_hat = m / (1 - b1 ** step)
    denom = np.sqrt(denom_v) / np.sqrt(1 - b2 ** step) + eps
    return p - lr * m_hat / denom, m, v, vmax
