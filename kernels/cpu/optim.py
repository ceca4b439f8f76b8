"""Optimizer updates, in place over flat parameter arrays (one fused pass per parameter).

Hyper-parameters arrive as scalars of the parameter's dtype, so float32 stays float32.
Formulas follow PyTorch's ``torch.optim.SGD`` / ``Adam`` / ``AdamW`` exactly. Each update has
a parallel version for large parameters and a serial one for small ones (most biases and
BatchNorm parameters), where waking threads costs more than the update.
"""

import numpy as np
from numba import prange

from .jit import PARALLEL, SERIAL, njit

PARALLEL_MIN = 1 << 15  # elements below which the serial versions run


@njit(**PARALLEL)
def sgd_step(p, g, buf, lr, momentum, dampening, nesterov, weight_decay, first, use_buf):
    """d = g + wd*p; buf = d (first step) or momentum*buf + (1-dampening)*d;
    p -= lr * (d + momentum*buf if nesterov else buf)  (plain d without momentum)."""
    one = p.dtype.type(1)
    for i in prange(p.size):
        d = g[i] + weight_decay * p[i]
        if use_buf:
            b = d if first else momentum * buf[i] + (one - dampening) * d
            buf[i] = b
            d = d + momentum * b if nesterov else b
        p[i] -= lr * d


@njit(**PARALLEL)
def adam_step(p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad,
              bias1, bias2_sqrt):
    """Adam (L2 weight decay added to the gradient) or AdamW (decoupled: p *= 1 - lr*wd)."""
    one = p.dtype.type(1)
    step = lr / bias1
    for i in prange(p.size):
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
        p[i] -= step * mi / (np.sqrt(vi) / bias2_sqrt + eps)


@njit(**SERIAL)
def sgd_step_serial(p, g, buf, lr, momentum, dampening, nesterov, weight_decay, first, use_buf):
    """sgd_step for small parameters."""
    one = p.dtype.type(1)
    for i in range(p.size):
        d = g[i] + weight_decay * p[i]
        if use_buf:
            b = d if first else momentum * buf[i] + (one - dampening) * d
            buf[i] = b
            d = d + momentum * b if nesterov else b
        p[i] -= lr * d


@njit(**SERIAL)
def adam_step_serial(p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad,
              bias1, bias2_sqrt):
    """adam_step for small parameters."""
    one = p.dtype.type(1)
    step = lr / bias1
    for i in range(p.size):
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
        p[i] -= step * mi / (np.sqrt(vi) / bias2_sqrt + eps)
