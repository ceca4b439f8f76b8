"""Differentiable ops, PyTorch's ``torch.nn.functional`` names and signatures.

One module per op family, the same stem as its kernels' (``kernels/cpu/<family>``,
``kernels/cuda/<family>``): ``conv``, ``pool``, ``norm``, ``elementwise``, ``reduce``,
``linalg``, ``loss``, ``layout``. In each, an op's :class:`~numbaconv.autograd.Function`
(forward and backward) sits beside its public function, which checks every argument first;
each reaches kernels only through the backend of its input tensors.
"""

from .conv import conv2d, conv_transpose2d
from .elementwise import (
    abs,
    add,
    div,
    dropout,
    eq,
    exp,
    ge,
    gt,
    le,
    log,
    log_softmax,
    lt,
    maximum,
    minimum,
    mul,
    ne,
    neg,
    pow,
    relu,
    sigmoid,
    softmax,
    sqrt,
    sub,
    tanh,
    where,
)
from .layout import (
    cat,
    expand,
    flatten,
    getitem,
    pad,
    permute,
    reshape,
    squeeze,
    stack,
    transpose,
    unsqueeze,
    view,
)
from .linalg import linear, matmul
from .loss import cross_entropy, mse_loss, nll_loss
from .norm import batch_norm, local_response_norm, sync_batch_norm
from .pool import (
    adaptive_avg_pool2d,
    adaptive_max_pool2d,
    avg_pool2d,
    interpolate,
    max_pool2d,
)
from .reduce import amax, amin, argmax, argmin, max, mean, min, sum

__all__ = [
    "abs", "add", "amax", "amin", "argmax", "argmin", "cat", "div", "eq", "exp", "expand",
    "flatten", "ge", "getitem", "gt", "le", "log", "log_softmax", "lt", "matmul", "max",
    "maximum", "mean", "min", "minimum", "mul", "ne", "neg", "pad", "permute", "pow", "relu",
    "reshape", "sigmoid", "softmax", "sqrt", "squeeze", "stack", "sub", "sum", "tanh",
    "transpose", "unsqueeze", "view", "where", "conv2d", "conv_transpose2d",
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "interpolate",
    "local_response_norm", "max_pool2d", "batch_norm", "sync_batch_norm", "cross_entropy",
    "dropout", "linear",
    "mse_loss", "nll_loss",
]
