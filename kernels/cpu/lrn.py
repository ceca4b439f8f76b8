"""Local response normalisation across channels (PyTorch's definition) and its gradient.

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
from numba import njit, prange

_opts = dict(parallel=True, cache=True, fastmath={"contract"})


@njit(cache=True, inline="always")
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


@njit(**_opts)
def lrn_forward(x, size, alpha, beta, k, y, scale):
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


@njit(**_opts)
def lrn_backward(gy, x, y, scale, size, alpha, beta, gx, work):
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
