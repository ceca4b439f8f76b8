"""Optimizer updates on the GPU: one thread per parameter element, in place on the parameter
and its state, every scalar a kernel argument of the parameter's dtype."""

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
    one = T(1)

    @cuda.jit
    def sgd_step(p, g, buf, lr, momentum, dampening, nesterov, weight_decay, first, use_buf):
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            d = g[i] + weight_decay * p[i]
            if use_buf:
                b = d if first else momentum * buf[i] + (one - dampening) * d
                buf[i] = b
                d = d + momentum * b if nesterov else b
            p[i] -= lr * d

    @cuda.jit
    def adam_step(p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad,
                  bias1, bias2_sqrt):
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            gi = g[i]
            if decoupled:
                p[i] *= one - lr * weight_decay
            else:
                gi = gi + weight_decay * p[i]
            mi = beta1 * m[i] + (one - beta1) * gi
            vi = beta2 * v[i] + (one - beta2) * gi * gi
            m[i] = mi
            v[i] = vi
            if amsgrad:
                if vi > vmax[i]:
                    vmax[i] = vi
                vi = vmax[i]
            p[i] -= (lr / bias1) * mi / (math.sqrt(vi) / bias2_sqrt + eps)

    return SimpleNamespace(sgd_step=sgd_step, adam_step=adam_step)
