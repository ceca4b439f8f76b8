"""The normalisation family on the CPU: batch normalisation and local response normalisation
(LRN), each with its gradient.

Batch normalisation over (N, C, L) arrays (L = H*W, or 1 for BatchNorm1d), per channel.

Training forward: two passes per channel (mean, then centred variance: no catastrophic
cancellation), then ``y = (x - mean) * invstd * w + b``. Backward recomputes ``xhat`` from ``x``:

    gx = w * invstd / M * (M * g - sum(g) - xhat * sum(g * xhat)),   M = N * L
    gw = sum(g * xhat),   gb = sum(g)

In evaluation the statistics are constants, so ``gx = g * w * invstd``. One ``prange`` task per
channel: it owns that channel's outputs and its entries of gw and gb. Sums accumulate per row (a
fresh accumulator per contiguous row vectorises) and then across rows.

Local response normalisation across channels (PyTorch's definition):

    s[n,c] = k + alpha/size * sum_{c' = c - size//2}^{c + (size-1)//2} x[n,c']^2   (zero outside)
    y[n,c] = x[n,c] * s[n,c]^(-beta)

and, with t = g * y / s,

    gx[n,c] = g[n,c] * s[n,c]^(-beta)
              - 2*alpha*beta/size * x[n,c] * sum_{c' = c - (size-1)//2}^{c + size//2} t[n,c'].

One ``prange`` task per image: it owns every channel of that image. Each window sum is taken
directly over its ``size`` channels (a running add/subtract would drift in float32), with the
pixel loop innermost so that it vectorises. Inputs are viewed as ``(N, C, H*W)``; ``alpha``,
``beta`` and ``k`` arrive as scalars of the input's dtype.
"""

import numpy as np
from numba import prange

from .jit import INLINE, PARALLEL, PARALLEL_SUMS, U, njit


@njit(**PARALLEL_SUMS)
def batch_stats(x, mean, var):
    """Per-channel mean and biased variance of x (N, C, L)."""
    n_img, n_ch, m = x.shape
    count = x.dtype.type(n_img * m)
    for c in prange(n_ch):
        s = x.dtype.type(0)
        for n in range(n_img):
            row = x[n, c]
            acc = x.dtype.type(0)
            for p in range(U(m)):
                acc += row[p]
            s += acc
        mu = s / count
        s2 = x.dtype.type(0)
        for n in range(n_img):
            row = x[n, c]
            acc = x.dtype.type(0)
            for p in range(U(m)):
                d = row[p] - mu
                acc += d * d
            s2 += acc
        mean[c] = mu
        var[c] = s2 / count


@njit(**PARALLEL_SUMS)
def normalize(x, mean, invstd, weight, bias, relu, y):
    """y = (x - mean) * invstd * weight + bias, optionally followed by ReLU (fused)."""
    n_img, n_ch, m = x.shape
    zero = x.dtype.type(0)
    for c in prange(n_ch):
        scale = invstd[c] * weight[c]
        shift = bias[c] - mean[c] * scale
        for n in range(n_img):
            src = x[n, c]
            dst = y[n, c]
            if relu:
                for p in range(U(m)):
                    v = src[p] * scale + shift
                    dst[p] = v if v > zero else zero
            else:
                for p in range(U(m)):
                    dst[p] = src[p] * scale + shift


@njit(**PARALLEL_SUMS)
def batch_norm_backward(g, x, mean, invstd, weight, training, relu, y, gx, gw, gb):
    """Gradients of y = (x - mean) * invstd * weight + bias per channel. With ``relu`` the
    forward was fused with a ReLU whose output is ``y``: the incoming gradient passes only
    where y > 0, applied here on the fly instead of in a separate pass."""
    n_img, n_ch, m = x.shape
    count = x.dtype.type(n_img * m)
    zero = x.dtype.type(0)
    for c in prange(n_ch):
        mu, inv = mean[c], invstd[c]
        sg = zero
        sgx = zero
        for n in range(n_img):
            g_row = g[n, c]
            x_row = x[n, c]
            a1 = zero
            a2 = zero
            if relu:
                y_row = y[n, c]
                for p in range(U(m)):
                    gv = g_row[p] if y_row[p] > zero else zero
                    a1 += gv
                    a2 += gv * (x_row[p] - mu)
            else:
                for p in range(U(m)):
                    a1 += g_row[p]
                    a2 += g_row[p] * (x_row[p] - mu)
            sg += a1
            sgx += a2
        sgx *= inv  # sum(g * xhat)
        gw[c] = sgx
        gb[c] = sg
        k = weight[c] * inv
        mean_g = sg / count if training else zero
        proj = sgx / count if training else zero
        for n in range(n_img):
            g_row = g[n, c]
            x_row = x[n, c]
            d_row = gx[n, c]
            if relu:
                y_row = y[n, c]
                if training:
                    for p in range(U(m)):
                        gv = g_row[p] if y_row[p] > zero else zero
                        d_row[p] = k * (gv - mean_g - (x_row[p] - mu) * inv * proj)
                else:
                    for p in range(U(m)):
                        d_row[p] = k * g_row[p] if y_row[p] > zero else zero
            elif training:
                for p in range(U(m)):
                    xhat = (x_row[p] - mu) * inv
                    d_row[p] = k * (g_row[p] - mean_g - xhat * proj)
            else:
                for p in range(U(m)):
                    d_row[p] = k * g_row[p]


# ------------------------------------------------------------------ local response normalisation
# LRN keeps float contraction only: its window sums are taken in order


@njit(**INLINE)
def _neg_pow(s, beta, mode, one):
    """s ** -beta; mode 1 (beta = 3/4, PyTorch's and AlexNet's) and 2 (beta = 1/2) use square
    roots, which vectorise, instead of pow."""
    if mode == 1:
        r = np.sqrt(s)
        return one / (r * np.sqrt(r))
    if mode == 2:
        return one / np.sqrt(s)
    return s ** (-beta)


@njit(cache=True)
def _mode(beta):
    return 1 if beta == 0.75 else (2 if beta == 0.5 else 0)


@njit(**PARALLEL)
def local_response_norm(x, size, alpha, beta, k, y, scale):
    n_img, n_ch, m = x.shape
    lo, hi = size // 2, (size - 1) // 2
    a = alpha / x.dtype.type(size)
    zero = x.dtype.type(0)
    mode = _mode(beta)
    for n in prange(n_img):
        for c in range(n_ch):
            row = scale[n, c]
            for p in range(m):
                row[p] = zero
            for cc in range(max(c - lo, 0), min(c + hi, n_ch - 1) + 1):
                for p in range(m):
                    v = x[n, cc, p]
                    row[p] += v * v
            for p in range(m):
                s = k + a * row[p]
                row[p] = s
                y[n, c, p] = x[n, c, p] * _neg_pow(s, beta, mode, x.dtype.type(1))


@njit(**PARALLEL)
def local_response_norm_backward(gy, x, y, scale, size, alpha, beta, gx, work):
    """``work`` is an (N, C, H*W) scratch array for t = g*y/s."""
    n_img, n_ch, m = x.shape
    lo, hi = size // 2, (size - 1) // 2
    coef = x.dtype.type(2) * alpha * beta / x.dtype.type(size)
    zero = x.dtype.type(0)
    mode = _mode(beta)
    for n in prange(n_img):
        for c in range(n_ch):
            for p in range(m):
                work[n, c, p] = gy[n, c, p] * y[n, c, p] / scale[n, c, p]
        for c in range(n_ch):
            row = gx[n, c]
            for p in range(m):
                row[p] = zero
            for cc in range(max(c - hi, 0), min(c + lo, n_ch - 1) + 1):
                for p in range(m):
                    row[p] += work[n, cc, p]
            for p in range(m):
                row[p] = gy[n, c, p] * _neg_pow(scale[n, c, p], beta, mode, x.dtype.type(1)) - \
                    coef * x[n, c, p] * row[p]
