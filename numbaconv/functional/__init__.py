"""Differentiable ops, PyTorch's ``torch.nn.functional`` names and signatures.

One :class:`~numbaconv.autograd.Function` per op; each reaches kernels only through the backend
of its input tensors.
"""

from .conv import conv2d, conv_transpose2d
from .nn import cross_entropy, dropout, linear, mse_loss, nll_loss
from .norm import batch_norm, local_response_norm, sync_batch_norm
from .ops import (
    abs,
    add,
    amax,
    amin,
    argmax,
    argmin,
    cat,
    div,
    eq,
    exp,
    expand,
    flatten,
    ge,
    getitem,
    gt,
    le,
    log,
    log_softmax,
    lt,
    matmul,
    max,
    maximum,
    mean,
    min,
    minimum,
    mul,
    ne,
    neg,
    pad,
    permute,
    pow,
    relu,
    reshape,
    sigmoid,
    softmax,
    sqrt,
    squeeze,
    stack,
    sub,
    sum,
    tanh,
    transpose,
    unsqueeze,
    view,
    where,
)
from .pool import (
    adaptive_avg_pool2d,
    adaptive_max_pool2d,
    avg_pool2d,
    interpolate,
    max_pool2d,
)

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
