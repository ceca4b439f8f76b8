"""numbaconv: convolutional networks in readable Python, with Numba-compiled kernels.

>>> import numbaconv as nc
>>> x = nc.randn(2, 3, requires_grad=True)
>>> (x * x).sum().backward()
"""

import os as _os

# Numba's OpenMP threads busy-wait after every parallel kernel (GNU OpenMP's default spin count
# is ~300k), and numbaconv runs its convolution GEMMs on Python threads: right after a Numba
# kernel those threads shared the cores with spinning OpenMP workers (ResNet-mini training
# steps 1.4x slower). A shorter spin keeps Numba's threads warm between back-to-back kernels
# and releases the cores soon after. It only takes effect if OpenMP is not yet loaded, and a
# value the user set wins.
_os.environ.setdefault("GOMP_SPINCOUNT", "30000")

from . import analysis, arith, data, distributed, functional, models, nn, optim, train, visualize
from ._summary import ModelSummary, summary
from .autograd import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from .backend import DEVICES, default_device, get_backend, seed_all
from .functional import (  # noqa: E402  (tensor-level functions, as in torch.*)
    abs,
    amax,
    amin,
    argmax,
    argmin,
    cat,
    exp,
    flatten,
    log,
    log_softmax,
    matmul,
    max,
    maximum,
    mean,
    min,
    minimum,
    pad,
    permute,
    relu,
    reshape,
    sigmoid,
    softmax,
    sqrt,
    squeeze,
    stack,
    sum,
    tanh,
    transpose,
    unsqueeze,
    where,
)
from .gradcheck import GradcheckError, gradcheck
from .serialization import load, save
from .tensor import (
    Tensor,
    arange,
    bool_,
    empty,
    empty_like,
    float16,
    float32,
    float64,
    full,
    full_like,
    int8,
    int16,
    int32,
    int64,
    ones,
    ones_like,
    rand,
    rand_like,
    randint,
    randn,
    randn_like,
    tensor,
    uint8,
    zeros,
    zeros_like,
)

__version__ = "0.1.0"


def manual_seed(seed: int) -> None:
    """Seed the random generators of every backend (``rand``, ``randn``, ``randint``, ...)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"manual_seed(): seed={seed!r} must be a non-negative int")
    seed_all(seed)


def device(name=None) -> str:
    """Normalise a device name (``None`` gives the default from ``NUMBACONV_BACKEND``)."""
    from .backend import parse_device

    return parse_device(name)


__all__ = [
    "Tensor", "tensor", "zeros", "ones", "full", "empty", "rand", "randn", "randint", "arange",
    "zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like",
    "manual_seed", "no_grad", "enable_grad", "is_grad_enabled", "set_grad_enabled",
    "gradcheck", "GradcheckError", "functional", "nn", "optim", "data", "models", "train",
    "arith", "analysis", "visualize", "summary", "ModelSummary", "distributed", "save", "load",
    "onnx",
    "default_device", "get_backend", "DEVICES",
    "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool_",
    "abs", "amax", "amin", "argmax", "argmin", "cat", "exp", "flatten", "log", "log_softmax",
    "matmul", "max", "maximum", "mean", "min", "minimum", "pad", "permute", "relu", "reshape",
    "sigmoid", "softmax", "sqrt", "squeeze", "stack", "sum", "tanh", "transpose", "unsqueeze",
    "where",
]


def __getattr__(name):
    # numbaconv.onnx needs the optional onnx package: imported on first use
    if name == "onnx":
        import importlib

        return importlib.import_module(".onnx", __name__)
    raise AttributeError(f"module 'numbaconv' has no attribute {name!r}")
