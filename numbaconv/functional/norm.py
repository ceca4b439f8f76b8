"""The normalisation family: batch normalisation (and its synchronised, multi-rank form) and
local response normalisation; each op's Function, argument checks and public function side by
side. Kernels: ``kernels/cpu/norm.py`` and ``kernels/cuda/norm.py``; references:
``kernels/reference.py``.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..autograd import Function, mark_written
from ..tensor import Tensor, is_floating
from ._args import check_float, check_tensor

# ------------------------------------------------------------------ batch norm


class BatchNorm(Function):
    def forward(self, x, w, b, *, mean, invstd, training, relu):
        be = self.backend
        shape = x.shape
        x3 = be.reshape(x, (shape[0], shape[1], int(np.prod(shape[2:]))))
        self.save(x3, w)
        self.stats = (mean, invstd, training, shape)
        y = be.batch_norm(x3, mean, invstd, w, b, relu=relu)
        if relu:
            self.relu_out = y
        return be.reshape(y, shape)

    def backward(self, g):
        be = self.backend
        x3, w = self.saved
        mean, invstd, training, shape = self.stats
        g3 = be.reshape(g, x3.shape)
        gx, gw, gb = be.batch_norm_backward(g3, x3, mean, invstd, w, training,
                                            relu_out=getattr(self, "relu_out", None))
        return be.reshape(gx, shape), gw, gb


def batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
               weight: Tensor | None = None, bias: Tensor | None = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5,
               _relu: bool = False) -> Tensor:
    """Batch normalisation over the channel dim (dim 1) of (N, C), (N, C, L) or (N, C, H, W).

    In training the batch statistics normalise and the running ones are updated in place:
    ``running = (1 - momentum) * running + momentum * batch`` (the variance unbiased), as PyTorch.
    """
    check_float(input, "batch_norm")
    if input.ndim < 2:
        raise ValueError(f"batch_norm(): input must be at least 2-D (N, C, ...), got "
                         f"{input.shape}")
    n_ch = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None:
            check_tensor(t, "batch_norm", name)
            if t.shape != (n_ch,):
                raise ValueError(f"batch_norm(): {name} has shape {t.shape}, expected ({n_ch},)")
    if not isinstance(eps, numbers.Real) or eps <= 0:
        raise ValueError(f"batch_norm(): eps={eps!r} must be positive")
    be = input.backend
    x3 = be.reshape(input.data, (input.shape[0], n_ch, int(np.prod(input.shape[2:]))))
    count = x3.shape[0] * x3.shape[2]
    use_batch = training or running_mean is None
    dt = input.dtype
    if count == 0:  # an empty batch: an empty output, no statistics (as PyTorch)
        mean, invstd = be.zeros((n_ch,), dt), be.full((n_ch,), 1, dt)
    elif use_batch:
        if count <= 1:
            raise ValueError(f"batch_norm(): expected more than one value per channel in "
                             f"training, got input of shape {input.shape}")
        update = training and running_mean is not None
        mean, invstd = be.batch_norm_stats(
            x3, float(eps), running_mean.data if update else None,
            running_var.data if update else None, float(momentum))
        if update:
            mark_written(running_mean)
            mark_written(running_var)
    else:
        mean = running_mean.data
        invstd = be.batch_norm_invstd(running_var.data, float(eps))
    w = weight if weight is not None else Tensor._make(be.full((n_ch,), 1, dt), input.device)
    b = bias if bias is not None else Tensor._make(be.full((n_ch,), 0, dt), input.device)
    return BatchNorm.apply(input, w, b, mean=mean, invstd=invstd, training=use_batch,
                           relu=bool(_relu))


class SyncBatchNorm(Function):
    """Batch normalisation whose statistics (given) span every rank's batch. Backward needs
    two per-channel sums of the whole batch, sum(dy) and sum(dy * x_hat): each rank computes
    its own, they are all-reduced, and the input gradient uses the totals. The weight and bias
    gradients stay this rank's own sums, which DistributedDataParallel then averages (as
    PyTorch's SyncBatchNorm)."""

    def forward(self, x, w, b, *, mean, invstd, count):
        be = self.backend
        shape = x.shape
        x3 = be.reshape(x, (shape[0], shape[1], int(np.prod(shape[2:]))))
        self.save(x3, w)
        self.stats = (mean, invstd, count, shape)
        return be.reshape(be.batch_norm(x3, mean, invstd, w, b), shape)

    def backward(self, g):
        from .. import distributed as dist

        be = self.backend
        x3, w = self.saved
        mean, invstd, count, shape = self.stats
        g3 = be.reshape(g, x3.shape)
        # with training=False: gx = g * w * invstd, and this rank's sum(g * x_hat) and sum(g)
        gx, gw, gb = be.batch_norm_backward(g3, x3, mean, invstd, w, False)
        n_ch = x3.shape[1]
        sums = np.concatenate([np.asarray(be.to_numpy(gb), np.float64),
                               np.asarray(be.to_numpy(gw), np.float64)])
        sums = dist._allreduce_now(sums)
        dt = x3.dtype
        w_h = np.asarray(be.to_numpy(w), np.float64)
        inv_h = np.asarray(be.to_numpy(invstd), np.float64)
        mean_dy, mean_dy_xhat = sums[:n_ch] / count, sums[n_ch:] / count
        # gx -= w * invstd * (mean(dy) + x_hat * mean(dy * x_hat)): one more batch_norm pass,
        # (x - mean) * invstd * scale + shift, with these per-channel scale and shift
        scale = be.asarray((w_h * inv_h * mean_dy_xhat).astype(dt), dt)
        shift = be.asarray((w_h * inv_h * mean_dy).astype(dt), dt)
        gx = be.binary("sub", gx, be.batch_norm(x3, mean, invstd, scale, shift))
        return be.reshape(gx, shape), gw, gb


def sync_batch_norm(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                    weight: Tensor | None = None, bias: Tensor | None = None,
                    momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Training-mode batch normalisation over the batch of every rank together (each rank's
    count, mean and variance per channel combined in float64 across the ranks); the
    running statistics, where given, updated with the global ones. A rank's batch may be
    empty as long as the total is not."""
    from .. import distributed as dist

    check_float(input, "sync_batch_norm")
    if input.ndim < 2:
        raise ValueError(f"sync_batch_norm(): input must be at least 2-D (N, C, ...), got "
                         f"{input.shape}")
    n_ch = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None:
            check_tensor(t, "sync_batch_norm", name)
            if t.shape != (n_ch,):
                raise ValueError(f"sync_batch_norm(): {name} has shape {t.shape}, expected "
                                 f"({n_ch},)")
    if not isinstance(eps, numbers.Real) or eps <= 0:
        raise ValueError(f"sync_batch_norm(): eps={eps!r} must be positive")
    be = input.backend
    dt = input.dtype
    x3 = be.reshape(input.data, (input.shape[0], n_ch, int(np.prod(input.shape[2:]))))
    local = x3.shape[0] * x3.shape[2]
    if local:  # this rank's mean and variance, by the backend's fused statistics kernel
        mean_l, invstd_l = be.batch_norm_stats(x3, float(eps))
        mean_l = np.asarray(be.to_numpy(mean_l), np.float64)
        var_l = np.maximum(1.0 / np.asarray(be.to_numpy(invstd_l), np.float64) ** 2
                           - float(eps), 0.0)
    else:
        mean_l = var_l = np.zeros(n_ch)
    # n * mean and n * (var + mean^2) summed over the ranks: the whole batch's moments
    totals = dist._allreduce_now(np.concatenate(
        [[local], local * mean_l, local * (var_l + mean_l * mean_l)]))
    count = totals[0]
    if count <= 1:
        raise ValueError(f"sync_batch_norm(): expected more than one value per channel over "
                         f"all ranks, got {int(count)}")
    g_mean = totals[1:1 + n_ch] / count
    g_var = np.maximum(totals[1 + n_ch:] / count - g_mean * g_mean, 0.0)
    if running_mean is not None and running_var is not None:
        m = float(momentum)
        rm = np.asarray(be.to_numpy(running_mean.data), np.float64)
        rv = np.asarray(be.to_numpy(running_var.data), np.float64)
        be.copy_(running_mean.data, be.asarray(((1 - m) * rm + m * g_mean).astype(dt), dt))
        be.copy_(running_var.data, be.asarray(
            ((1 - m) * rv + m * g_var * count / (count - 1)).astype(dt), dt))
        mark_written(running_mean)
        mark_written(running_var)
    mean = be.asarray(g_mean.astype(dt), dt)
    invstd = be.asarray((1.0 / np.sqrt(g_var + float(eps))).astype(dt), dt)
    w = weight if weight is not None else Tensor._make(be.full((n_ch,), 1, dt), input.device)
    b = bias if bias is not None else Tensor._make(be.full((n_ch,), 0, dt), input.device)
    return SyncBatchNorm.apply(input, w, b, mean=mean, invstd=invstd, count=float(count))


# ------------------------------------------------------------------ local response norm


class LocalResponseNorm(Function):
    def forward(self, x, *, size, alpha, beta, k):
        y, scale = self.backend.local_response_norm(x, size, alpha, beta, k)
        self.save(x, y, scale)
        self.args = (size, alpha, beta, k)
        return y

    def backward(self, g):
        x, y, scale = self.saved
        return (self.backend.local_response_norm_backward(g, x, y, scale, *self.args),)


def local_response_norm(input: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0) -> Tensor:
    """Local response normalisation across channels, exactly as PyTorch defines it::

        y[n,c] = x[n,c] / (k + alpha/size * sum_{c' in window(c)} x[n,c']^2) ** beta

    with the window ``c - size//2 .. c + (size-1)//2`` zero-padded at the edges: alpha multiplies
    the *mean* of the squares. AlexNet (Krizhevsky et al., 2012) writes the same thing with the
    sum, ``b = a / (k + alpha' * sum a^2) ** beta`` and alpha' = 1e-4, n = 5, k = 2, beta = 0.75;
    so the paper's layer is ``local_response_norm(x, 5, alpha=5e-4, beta=0.75, k=2.0)``.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"local_response_norm(): input must be a Tensor, got "
                        f"{type(input).__name__}")
    if not is_floating(input.dtype):
        raise TypeError(f"local_response_norm(): input must be floating point, got "
                        f"{input.dtype}")
    if input.ndim < 3:
        raise ValueError(f"local_response_norm(): input must be at least 3-D (N, C, ...), got "
                         f"shape {input.shape}")
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise ValueError(f"local_response_norm(): size={size!r} must be a positive int")
    for name, v in (("alpha", alpha), ("beta", beta), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"local_response_norm(): {name}={v!r} must be a finite number")
    return LocalResponseNorm.apply(input, size=int(size), alpha=float(alpha), beta=float(beta),
                                   k=float(k))
