"""The user-facing tensor functions: argument checking, then one Function per op.

Everything here validates its arguments (raising ``ValueError``/``TypeError`` that names the
argument, the value and what was expected) before any kernel runs.
"""

from __future__ import annotations

import builtins
import numbers

import numpy as np

from ..tensor import Tensor, _norm_dim, is_floating
from . import math as M


def _check_tensor(x, fn: str, argname: str = "input") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}(): {argname} must be a Tensor, got {type(x).__name__}")
    return x


def _check_float(x: Tensor, fn: str, argname: str = "input") -> Tensor:
    _check_tensor(x, fn, argname)
    if not is_floating(x.dtype):
        raise TypeError(f"{fn}(): {argname} must be floating point, got dtype {x.dtype}")
    return x


# ------------------------------------------------------------------ arithmetic
def add(a, b) -> Tensor:
    return M.Add.apply(*M.as_operands(a, b, "add"))


def sub(a, b) -> Tensor:
    return M.Sub.apply(*M.as_operands(a, b, "sub"))


def mul(a, b) -> Tensor:
    return M.Mul.apply(*M.as_operands(a, b, "mul"))


def div(a, b) -> Tensor:
    a, b = M.as_operands(a, b, "div")
    if not is_floating(a.dtype):  # true division, as PyTorch: ints give float32
        a, b = a.float(), b.float()
    return M.Div.apply(a, b)


def pow(a, b) -> Tensor:
    return M.Pow.apply(*M.as_operands(a, b, "pow"))


def maximum(a, b) -> Tensor:
    return M.Maximum.apply(*M.as_operands(a, b, "maximum"))


def minimum(a, b) -> Tensor:
    return M.Minimum.apply(*M.as_operands(a, b, "minimum"))


def neg(x) -> Tensor:
    return M.Neg.apply(_check_tensor(x, "neg"))


def _unary(cls, name):
    def f(x: Tensor) -> Tensor:
        return cls.apply(_check_float(x, name))

    f.__name__ = name
    f.__doc__ = f"Elementwise {name}, differentiable."
    return f


exp = _unary(M.Exp, "exp")
log = _unary(M.Log, "log")
sqrt = _unary(M.Sqrt, "sqrt")
tanh = _unary(M.Tanh, "tanh")
sigmoid = _unary(M.Sigmoid, "sigmoid")
relu = _unary(M.Relu, "relu")


def abs(x) -> Tensor:
    return M.Abs.apply(_check_tensor(x, "abs"))


def where(condition, input, other) -> Tensor:
    """``input`` where ``condition`` holds, else ``other`` (broadcasting; differentiable)."""
    _check_tensor(condition, "where", "condition")
    if condition.dtype.kind != "b":
        raise TypeError(f"where(): condition must be a bool tensor, got dtype {condition.dtype}")
    a, b = M.as_operands(input, other, "where")
    return M.Where.apply(condition, a, b)


def _compare(op):
    def f(a, b) -> Tensor:
        a, b = M.as_operands(a, b, op)
        return Tensor._make(a.backend.binary(op, a.data, b.data), a.device)

    f.__name__ = op
    return f


eq, ne, lt, le, gt, ge = (_compare(o) for o in ("eq", "ne", "lt", "le", "gt", "ge"))


# ------------------------------------------------------------------ reductions
def sum(x, dim=None, keepdim: bool = False) -> Tensor:
    _check_tensor(x, "sum")
    if x.dtype.kind == "b":
        x = x.long()
    return M.Sum.apply(x, axes=M.norm_dims(dim, x.ndim), keepdims=bool(keepdim))


def mean(x, dim=None, keepdim: bool = False) -> Tensor:
    _check_float(x, "mean")
    axes = M.norm_dims(dim, x.ndim)  # a mean over an empty dim is NaN, as in PyTorch
    return M.Mean.apply(x, axes=axes, keepdims=bool(keepdim))


def _check_extent(x, dim, op):
    """An extremum over nothing has no value: refused, as PyTorch; over a non-empty dim of a
    tensor empty elsewhere (a batch of 0), it is an empty result."""
    if dim is None or isinstance(dim, tuple | list):
        if x.numel() == 0:
            raise ValueError(f"{op}(): input of shape {x.shape} is empty")
    elif x.shape and x.shape[_norm_dim(dim, x.ndim)] == 0:
        raise ValueError(f"{op}(): dim {dim} of shape {x.shape} is empty")


def _extremum(op):
    def f(x, dim=None, keepdim: bool = False):
        _check_tensor(x, op)
        _check_extent(x, dim, op)
        if dim is None:
            return M.Extremum.apply(x, op=op, axes=tuple(range(x.ndim)), keepdims=False)
        if isinstance(dim, tuple | list):
            raise TypeError(f"{op}(): dim must be an int (use a{op}() for several dims)")
        axis = _norm_dim(dim, x.ndim)
        values, indices = M.ExtremumDim.apply(x, op=op, axis=axis, keepdims=bool(keepdim))
        return M.MaxMin(values, indices)

    f.__name__ = op
    f.__doc__ = (f"``{op}(x)`` is the {op} of all elements; ``{op}(x, dim)`` returns "
                 f"``(values, indices)`` along ``dim``, as PyTorch does.")
    return f


max = _extremum("max")
min = _extremum("min")


def amax(x, dim=None, keepdim: bool = False) -> Tensor:
    _check_tensor(x, "amax")
    return M.Extremum.apply(x, op="max", axes=M.norm_dims(dim, x.ndim), keepdims=bool(keepdim))


def amin(x, dim=None, keepdim: bool = False) -> Tensor:
    _check_tensor(x, "amin")
    return M.Extremum.apply(x, op="min", axes=M.norm_dims(dim, x.ndim), keepdims=bool(keepdim))


def _arg(op):
    def f(x, dim=None, keepdim: bool = False) -> Tensor:
        _check_tensor(x, op)
        _check_extent(x, dim, op)
        be = x.backend
        if dim is None:
            return Tensor._make(be.arg_reduce(op, be.reshape(x.data, (-1,)), 0, False),
                                x.device)
        return Tensor._make(be.arg_reduce(op, x.data, _norm_dim(dim, x.ndim), bool(keepdim)),
                            x.device)

    f.__name__ = op
    return f


argmax = _arg("argmax")
argmin = _arg("argmin")


# ------------------------------------------------------------------ matmul
def matmul(a, b) -> Tensor:
    _check_tensor(a, "matmul", "input")
    _check_tensor(b, "matmul", "other")
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul(): both arguments need at least 1 dimension, got shapes "
                         f"{a.shape} and {b.shape}")
    ka = a.shape[-1]
    kb = b.shape[0] if b.ndim == 1 else b.shape[-2]
    if ka != kb:
        raise ValueError(f"matmul(): shapes {a.shape} and {b.shape} cannot be multiplied "
                         f"({ka} != {kb})")
    if a.ndim > 2 and b.ndim > 2:
        try:
            np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except ValueError:
            raise ValueError(f"matmul(): batch dimensions of {a.shape} and {b.shape} do not "
                             f"broadcast") from None
    a, b = M.as_operands(a, b, "matmul")
    return M.MatMul.apply(a, b)


# ------------------------------------------------------------------ layout
def _shape_arg(shape, fn):
    if len(shape) == 1 and isinstance(shape[0], tuple | list):
        shape = tuple(shape[0])
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise TypeError(f"{fn}(): shape must be ints, got {shape!r}")
    return tuple(int(s) for s in shape)


def _resolve_shape(x: Tensor, shape, fn):
    if shape.count(-1) > 1:
        raise ValueError(f"{fn}(): only one dimension can be -1, got {shape}")
    if any(s < -1 for s in shape):
        raise ValueError(f"{fn}(): invalid shape {shape}")
    known = int(np.prod([s for s in shape if s != -1])) if shape else 1
    n = x.numel()
    if -1 in shape:
        if known == 0 or n % known:
            raise ValueError(f"{fn}(): shape {shape} is invalid for input of size {n}")
        shape = tuple(n // known if s == -1 else s for s in shape)
    if int(np.prod(shape)) != n:
        raise ValueError(f"{fn}(): shape {shape} is invalid for input of size {n} "
                         f"(shape {x.shape})")
    return shape


def reshape(x, *shape) -> Tensor:
    _check_tensor(x, "reshape")
    shape = _resolve_shape(x, _shape_arg(shape, "reshape"), "reshape")
    if shape == x.shape:
        return x
    return M.Reshape.apply(x, shape=shape, view=False)


def view(x, *shape) -> Tensor:
    _check_tensor(x, "view")
    shape = _resolve_shape(x, _shape_arg(shape, "view"), "view")
    return M.Reshape.apply(x, shape=shape, view=True)


def flatten(x, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    _check_tensor(x, "flatten")
    if x.ndim == 0:
        return reshape(x, 1)
    s = _norm_dim(start_dim, x.ndim, "start_dim")
    e = _norm_dim(end_dim, x.ndim, "end_dim")
    if s > e:
        raise ValueError(f"flatten(): start_dim={start_dim} comes after end_dim={end_dim}")
    shape = x.shape[:s] + (int(np.prod(x.shape[s:e + 1])),) + x.shape[e + 1:]
    return reshape(x, shape)


def permute(x, *dims) -> Tensor:
    _check_tensor(x, "permute")
    dims = _shape_arg(dims, "permute")
    if len(dims) != x.ndim:
        raise ValueError(f"permute(): dims={dims} has {len(dims)} entries for a tensor with "
                         f"{x.ndim} dimensions")
    axes = tuple(_norm_dim(d, x.ndim, "dims") for d in dims)
    if sorted(axes) != list(range(x.ndim)):
        raise ValueError(f"permute(): dims={dims} is not a permutation of the dimensions")
    return M.Permute.apply(x, axes=axes)


def transpose(x, dim0: int, dim1: int) -> Tensor:
    _check_tensor(x, "transpose")
    axes = list(range(x.ndim))
    a, b = _norm_dim(dim0, x.ndim, "dim0"), _norm_dim(dim1, x.ndim, "dim1")
    if x.ndim < 2:
        return x
    axes[a], axes[b] = axes[b], axes[a]
    return M.Permute.apply(x, axes=tuple(axes))


def unsqueeze(x, dim: int) -> Tensor:
    _check_tensor(x, "unsqueeze")
    d = _norm_dim(dim, x.ndim + 1, "dim")
    return reshape(x, x.shape[:d] + (1,) + x.shape[d:])


def squeeze(x, dim=None) -> Tensor:
    _check_tensor(x, "squeeze")
    if dim is None:
        return reshape(x, tuple(s for s in x.shape if s != 1))
    d = _norm_dim(dim, x.ndim, "dim")
    if x.shape[d] != 1:
        return x
    return reshape(x, x.shape[:d] + x.shape[d + 1:])


def expand(x, *shape) -> Tensor:
    _check_tensor(x, "expand")
    shape = _shape_arg(shape, "expand")
    if len(shape) < x.ndim:
        raise ValueError(f"expand(): shape {shape} has fewer dimensions than {x.shape}")
    lead = len(shape) - x.ndim
    full = tuple(x.shape[i - lead] if s == -1 and i >= lead else s for i, s in enumerate(shape))
    try:
        np.broadcast_shapes(x.shape, full)
        if np.broadcast_shapes(x.shape, full) != full:
            raise ValueError
    except ValueError:
        raise ValueError(f"expand(): cannot expand shape {x.shape} to {shape}") from None
    return M.Expand.apply(x, shape=full)


def _index_part(i, device):
    if isinstance(i, Tensor):
        if i.device != device:
            raise RuntimeError(f"indexing: index tensor on {i.device!r}, tensor on {device!r}")
        if i.dtype.kind not in "iub":
            raise IndexError(f"indexing: tensors used as indices must be integer or bool, "
                             f"got dtype {i.dtype}")
        return i.numpy() if i.device == "cpu" else i.data
    if isinstance(i, list):
        arr = np.asarray(i)
        if arr.dtype.kind not in "iub":
            raise IndexError(f"indexing: lists used as indices must hold ints or bools, got {i!r}")
        return arr
    if isinstance(i, np.ndarray):
        if i.dtype.kind not in "iub":
            raise IndexError(f"indexing: arrays used as indices must be integer or bool, got "
                             f"dtype {i.dtype}")
        return i
    if i is None or i is Ellipsis or isinstance(i, slice) or isinstance(i, numbers.Integral):
        if isinstance(i, slice) and i.step is not None and i.step <= 0:
            raise ValueError(f"indexing: slice step must be positive, got {i.step}")
        return i
    raise IndexError(f"indexing: unsupported index {i!r} of type {type(i).__name__}")


def getitem(x, index) -> Tensor:
    _check_tensor(x, "getitem")
    parts = index if isinstance(index, tuple) else (index,)
    parts = tuple(_index_part(p, x.device) for p in parts)
    return M.GetItem.apply(x, index=parts)


def _check_seq(tensors, fn):
    if isinstance(tensors, Tensor) or not isinstance(tensors, list | tuple):
        raise TypeError(f"{fn}(): tensors must be a list or tuple of Tensors")
    if len(tensors) == 0:
        raise ValueError(f"{fn}(): tensors must not be empty")
    for i, t in enumerate(tensors):
        _check_tensor(t, fn, f"tensors[{i}]")
    first = tensors[0]
    for i, t in enumerate(tensors[1:], 1):
        if t.dtype != first.dtype:
            raise TypeError(f"{fn}(): tensors[{i}] has dtype {t.dtype}, tensors[0] {first.dtype}")
        if t.device != first.device:
            raise RuntimeError(f"{fn}(): tensors[{i}] is on {t.device!r}, tensors[0] on "
                               f"{first.device!r}")
    return tensors


def cat(tensors, dim: int = 0) -> Tensor:
    tensors = _check_seq(tensors, "cat")
    ref = tensors[0]
    if ref.ndim == 0:
        raise ValueError("cat(): zero-dimensional tensors cannot be concatenated")
    d = _norm_dim(dim, ref.ndim)
    for i, t in enumerate(tensors):
        if t.ndim != ref.ndim or t.shape[:d] + t.shape[d + 1:] != ref.shape[:d] + ref.shape[d + 1:]:
            raise ValueError(f"cat(): tensors[{i}] has shape {t.shape}, which does not match "
                             f"{ref.shape} outside dim {d}")
    return M.Cat.apply(*tensors, axis=d)


def stack(tensors, dim: int = 0) -> Tensor:
    tensors = _check_seq(tensors, "stack")
    ref = tensors[0]
    for i, t in enumerate(tensors):
        if t.shape != ref.shape:
            raise ValueError(f"stack(): tensors[{i}] has shape {t.shape}, expected {ref.shape}")
    d = _norm_dim(dim, ref.ndim + 1)
    return M.Stack.apply(*tensors, axis=d)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge",
              "circular": "wrap"}


def pad(input, pad, mode: str = "constant", value: float = 0.0) -> Tensor:
    """Pad the last ``len(pad) // 2`` dims, ``pad = (left, right, top, bottom, ...)`` as PyTorch."""
    _check_tensor(input, "pad")
    if not isinstance(pad, tuple | list) or len(pad) % 2 or not pad:
        raise ValueError(f"pad(): pad must be a sequence of even length, got {pad!r}")
    if any(isinstance(p, bool) or not isinstance(p, numbers.Integral) for p in pad):
        raise ValueError(f"pad(): pad must hold ints, got {pad!r}")
    if len(pad) // 2 > input.ndim:
        raise ValueError(f"pad(): pad={pad!r} pads {len(pad) // 2} dims of a {input.ndim}-d input")
    if any(p < 0 for p in pad):  # negative padding crops, as in PyTorch (constant mode)
        if mode != "constant":
            raise ValueError(f"pad(): negative padding {pad!r} crops, which only "
                             f"mode='constant' does; got mode={mode!r}")
        index = [slice(None)] * input.ndim
        for i in range(len(pad) // 2):
            d = input.ndim - 1 - i
            lo, hi = builtins.max(-int(pad[2 * i]), 0), builtins.max(-int(pad[2 * i + 1]), 0)
            if lo + hi > input.shape[d]:
                raise ValueError(f"pad(): pad={pad!r} crops {lo + hi} of the {input.shape[d]} "
                                 f"elements of dim {d}")
            index[d] = slice(lo, input.shape[d] - hi)
        input = input[tuple(index)]
        pad = tuple(builtins.max(int(p), 0) for p in pad)
        if not any(pad):
            return input
    if mode not in _PAD_MODES:
        raise ValueError(f"pad(): mode={mode!r}; expected one of {sorted(_PAD_MODES)}")
    widths = [(0, 0)] * input.ndim
    for i in range(len(pad) // 2):
        widths[input.ndim - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    for d, (lo, hi) in enumerate(widths):
        n = input.shape[d]
        if mode == "reflect" and (lo >= n or hi >= n) and (lo or hi):
            raise ValueError(f"pad(): reflect padding ({lo}, {hi}) must be smaller than the "
                             f"dimension size {n}")
        if mode == "circular" and (lo > n or hi > n):
            raise ValueError(f"pad(): circular padding ({lo}, {hi}) must not exceed the "
                             f"dimension size {n}")
        if mode != "constant" and n == 0 and (lo or hi):
            raise ValueError(f"pad(): cannot {mode}-pad an empty dimension")
    return M.Pad.apply(input, pads=tuple(widths), mode=_PAD_MODES[mode], value=value)


def _softmax(cls, fn, input, dim):
    _check_float(input, fn)
    axis = _norm_dim(dim, input.ndim)
    if input.ndim == 0:
        return reshape(cls.apply(reshape(input, 1), axis=0), ())
    return cls.apply(input, axis=axis)


def _softmax_dtype(input, dtype, fn):
    if dtype is None:
        return input
    _check_tensor(input, fn)
    from ..tensor import _as_dtype, is_floating

    dt = _as_dtype(dtype)
    if not is_floating(dt):
        raise TypeError(f"{fn}(): dtype={dtype!r} must be a floating-point dtype")
    return input.type(dt)  # cast first, as PyTorch (a differentiable cast)


def softmax(input, dim: int, dtype=None) -> Tensor:
    """exp(x) / sum(exp(x)) along ``dim``, shifted by the maximum for stability; ``dtype``
    casts the input first, as PyTorch's."""
    return _softmax(M.Softmax, "softmax", _softmax_dtype(input, dtype, "softmax"), dim)


def log_softmax(input, dim: int, dtype=None) -> Tensor:
    """x - logsumexp(x) along ``dim``; finite for logits of any size; ``dtype`` casts the
    input first."""
    return _softmax(M.LogSoftmax, "log_softmax", _softmax_dtype(input, dtype, "log_softmax"),
                    dim)
