"""The losses' per-row kernels: the negative log-likelihood of each row's target, and its
gradient. (The log-softmax before it is reduce.py's ``softmax_rows``; the reduction over rows
after it is a plain sum.)
"""

from __future__ import annotations

import math
from functools import cache
from types import SimpleNamespace

import numba
import numpy as np
from numba import cuda


@cache
def kernels(dtype) -> SimpleNamespace:
    T = numba.from_dtype(np.dtype(dtype))
    zero, one = T(0), T(1)
    nan = T(math.nan)

    @cuda.jit
    def nll_rows(logp, target, weight, has_weight, ignore_index, losses, row_w, err):
        """losses[r] = -w[t] * logp[r, t] for t = target[r]. A target outside [0, C) (and not
        ignore_index) makes its loss NaN and is flagged in err = (1, t) for the host to
        report at its next synchronisation, instead of a host check on every call."""
        for r in range(cuda.grid(1), losses.size, cuda.gridsize(1)):
            t = target[r]
            if t == ignore_index:
                losses[r] = zero
                row_w[r] = zero
            elif t < 0 or t >= logp.shape[1]:
                losses[r] = nan
                row_w[r] = zero
                err[1] = t
                err[0] = 1
            else:
                w = weight[t] if has_weight else one
                losses[r] = -w * logp[r, t]
                row_w[r] = w

    @cuda.jit
    def nll_rows_backward(g, target, row_w, out):
        """out (rows, C), zeroed by the caller: out[r, t] = -g[r] * w[r]."""
        for r in range(cuda.grid(1), g.size, cuda.gridsize(1)):
            if row_w[r] != zero:
                out[r, target[r]] = -g[r] * row_w[r]

    return SimpleNamespace(nll_rows=nll_rows, nll_rows_backward=nll_rows_backward)
