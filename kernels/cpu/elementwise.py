"""Activations and row-wise softmax on contiguous arrays.

Activations work on flat 1-D views; softmax works on ``(rows, n)`` matrices, one row per
``prange`` iteration. Constants are built with ``out.dtype.type(...)`` so that float32 inputs
stay float32 throughout (a bare ``0.0`` would be float64).
"""

import numpy as np
from numba import prange

from .jit import PARALLEL, njit


@njit(**PARALLEL)
def relu(x, out):
    """out[i] = x[i] if x[i] > 0 else 0 (NaN stays NaN, as in PyTorch)."""
    zero = out.dtype.type(0)
    for i in prange(x.size):
        v = x[i]
        out[i] = zero if v <= zero else v


@njit(**PARALLEL)
def add(a, b, out):
    """out[i] = a[i] + b[i] on flat views: large same-shape sums (residual connections, the
    gradients of a tensor used twice) on both cores, where NumPy's add runs on one."""
    for i in prange(a.size):
        out[i] = a[i] + b[i]


@njit(**PARALLEL)
def add_into(dst, src):
    """dst[i] += src[i] on flat views (gradient accumulation into an existing .grad)."""
    for i in prange(dst.size):
        dst[i] += src[i]


@njit(**PARALLEL)
def relu_backward(gy, y, out):
    """out[i] = gy[i] where y[i] > 0, else 0."""
    zero = out.dtype.type(0)
    for i in prange(gy.size):
        out[i] = gy[i] if y[i] > zero else zero


@njit(**PARALLEL)
def sigmoid(x, out):
    """Numerically stable logistic: exp never sees a large positive argument."""
    one = out.dtype.type(1)
    for i in prange(x.size):
        v = x[i]
        if v >= 0:
            out[i] = one / (one + np.exp(-v))
        else:
            e = np.exp(v)
            out[i] = e / (one + e)


@njit(**PARALLEL)
def sigmoid_backward(gy, y, out):
    one = out.dtype.type(1)
    for i in prange(gy.size):
        out[i] = gy[i] * y[i] * (one - y[i])


@njit(**PARALLEL)
def tanh_backward(gy, y, out):
    one = out.dtype.type(1)
    for i in prange(gy.size):
        out[i] = gy[i] * (one - y[i] * y[i])


@njit(**PARALLEL)
def softmax_rows(x, out, log):
    """Row-wise (log-)softmax of a (rows, n) matrix: max-shifted, one pass to sum, one to write."""
    rows, n = x.shape
    for r in prange(rows):
        m = x[r, 0]
        for j in range(1, n):
            v = x[r, j]
            if v > m or v != v:
                m = v
        if m == -np.inf:  # a row of -inf: keep it finite-safe (gives NaN like PyTorch)
            m = x.dtype.type(0)
        s = x.dtype.type(0)
        for j in range(n):
            s += np.exp(x[r, j] - m)
        if log:
            lse = m + np.log(s)
            for j in range(n):
                out[r, j] = x[r, j] - lse
        else:
            inv = x.dtype.type(1) / s
            for j in range(n):
                out[r, j] = np.exp(x[r, j] - m) * inv


@njit(**PARALLEL)
def softmax_rows_backward(gy, y, out, log):
    """softmax: gx = y * (gy - sum(gy * y)); log_softmax: gx = gy - exp(y) * sum(gy)."""
    rows, n = gy.shape
    for r in prange(rows):
        s = gy.dtype.type(0)
        if log:
            for j in range(n):
                s += gy[r, j]
            for j in range(n):
                out[r, j] = gy[r, j] - np.exp(y[r, j]) * s
        else:
            for j in range(n):
                s += gy[r, j] * y[r, j]
            for j in range(n):
                out[r, j] = y[r, j] * (gy[r, j] - s)
