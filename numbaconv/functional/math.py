"""Differentiable tensor algebra: elementwise ops, reductions, matmul, layout and indexing.

Each op is a :class:`~numbaconv.autograd.Function` whose ``forward`` and ``backward`` sit side by
side and reach arrays only through ``self.backend``.
"""

from __future__ import annotations

import numbers
from collections import namedtuple

import numpy as np

from ..autograd import Function
from ..tensor import Tensor, _norm_dim, float32, is_floating, tensor

# ------------------------------------------------------------------ operand handling


def _result_float_dtype(a: Tensor, b: Tensor, op: str):
    """PyTorch-style promotion between a float and a non-float; two floats must agree."""
    fa, fb = is_floating(a.dtype), is_floating(b.dtype)
    if fa and fb and a.dtype != b.dtype:
        raise TypeError(
            f"{op}: operands have dtypes {a.dtype} and {b.dtype}; convert one explicitly "
            f"(e.g. .to(numbaconv.float64)) - numbaconv never recasts silently"
        )
    if fa != fb:
        return a.dtype if fa else b.dtype
    if a.dtype != b.dtype:
        return np.promote_types(a.dtype, b.dtype)
    return a.dtype


def as_operands(a, b, op: str) -> tuple[Tensor, Tensor]:
    """Turn ``a`` and ``b`` (tensors or Python numbers) into tensors of one dtype and device."""
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        raise TypeError(f"{op}: expected at least one Tensor, got {type(a).__name__} and "
                        f"{type(b).__name__}")
    if not isinstance(a, Tensor):
        a = _scalar_like(a, b, op)
    if not isinstance(b, Tensor):
        b = _scalar_like(b, a, op)
    if a.device != b.device:
        raise RuntimeError(
            f"{op}: expected both tensors on one device, got {a.device!r} and {b.device!r}; "
            f"move one explicitly with .to(device)"
        )
    dt = _result_float_dtype(a, b, op)
    if a.dtype != dt:
        a = a.type(dt)
    if b.dtype != dt:
        b = b.type(dt)
    return a, b


def _scalar_like(value, like: Tensor, op: str) -> Tensor:
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, numbers.Number) or isinstance(value, complex):
        raise TypeError(f"{op}: expected a Tensor or a real number, got {type(value).__name__}")
    # PyTorch's rules: a float tensor keeps its dtype, an int or bool tensor meeting a Python
    # float becomes float32, a bool tensor meeting an int becomes int64
    if is_floating(like.dtype):
        dt = like.dtype
    elif isinstance(value, float):
        dt = float32
    elif like.dtype.kind == "b" and not isinstance(value, bool):
        dt = np.dtype(np.int64)
    else:
        dt = like.dtype
    return Tensor._make(like.backend.full((), value, dt), like.device)


def unbroadcast(backend, g, shape):
    return g if tuple(g.shape) == tuple(shape) else backend.sum_to_shape(g, shape)


# ------------------------------------------------------------------ elementwise binary


class Add(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return self.backend.binary("add", a, b)

    def backward(self, g):
        sa, sb = self.shapes
        return unbroadcast(self.backend, g, sa), unbroadcast(self.backend, g, sb)


class Sub(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return self.backend.binary("sub", a, b)

    def backward(self, g):
        be = self.backend
        sa, sb = self.shapes
        gb = unbroadcast(be, be.unary("neg", g), sb) if self.needs_input_grad[1] else None
        return unbroadcast(be, g, sa), gb


class Mul(Function):
    def forward(self, a, b):
        self.save(a, b)
        return self.backend.binary("mul", a, b)

    def backward(self, g):
        be = self.backend
        a, b = self.saved
        ga = unbroadcast(be, be.binary("mul", g, b), a.shape) if self.needs_input_grad[0] else None
        gb = unbroadcast(be, be.binary("mul", g, a), b.shape) if self.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    def forward(self, a, b):
        self.save(a, b)
        return self.backend.binary("div", a, b)

    def backward(self, g):
        be = self.backend
        a, b = self.saved
        g_over_b = be.binary("div", g, b)
        ga = unbroadcast(be, g_over_b, a.shape) if self.needs_input_grad[0] else None
        gb = None
        if self.needs_input_grad[1]:
            gb = unbroadcast(be, be.unary("neg", be.binary("mul", g_over_b,
                                                           be.binary("div", a, b))), b.shape)
        return ga, gb


class Pow(Function):
    def forward(self, a, b):
        y = self.backend.binary("pow", a, b)
        self.save(a, b, y)
        return y

    def backward(self, g):
        be = self.backend
        a, b, y = self.saved
        ga = gb = None
        if self.needs_input_grad[0]:
            one = be.full((), 1, b.dtype)
            ga = be.binary("mul", be.binary("mul", g, b),
                           be.binary("pow", a, be.binary("sub", b, one)))
            ga = unbroadcast(be, ga, a.shape)
        if self.needs_input_grad[1]:
            gb = be.binary("mul", be.binary("mul", g, y), be.unary("log", a))
            gb = unbroadcast(be, gb, b.shape)
        return ga, gb


class Maximum(Function):
    """Elementwise max; at ties the gradient is split evenly, as PyTorch does."""

    op = "maximum"

    def forward(self, a, b):
        self.save(a, b)
        return self.backend.binary(self.op, a, b)

    def backward(self, g):
        be = self.backend
        a, b = self.saved
        wa = be.extremum_weights(a, b, self.op)
        ga = unbroadcast(be, be.binary("mul", g, wa), a.shape)
        one = be.full((), 1, wa.dtype)
        gb = unbroadcast(be, be.binary("mul", g, be.binary("sub", one, wa)), b.shape)
        return ga, gb


class Minimum(Maximum):
    op = "minimum"


# ------------------------------------------------------------------ elementwise unary


class Unary(Function):
    """``y = op(x)`` whose derivative is written in terms of x and y."""

    op = ""

    def forward(self, x):
        y = self.backend.unary(self.op, x)
        self.save(x, y)
        return y

    def backward(self, g):
        x, y = self.saved
        return (self.grad(self.backend, g, x, y),)


class Neg(Unary):
    op = "neg"

    def grad(self, be, g, x, y):
        return be.unary("neg", g)


class Exp(Unary):
    op = "exp"

    def grad(self, be, g, x, y):
        return be.binary("mul", g, y)


class Log(Unary):
    op = "log"

    def grad(self, be, g, x, y):
        return be.binary("div", g, x)


class Sqrt(Unary):
    op = "sqrt"

    def grad(self, be, g, x, y):
        return be.binary("div", g, be.binary("mul", y, be.full((), 2, y.dtype)))


class Abs(Unary):
    op = "abs"

    def grad(self, be, g, x, y):
        return be.binary("mul", g, be.unary("sign", x))


class Activation(Function):
    """relu / sigmoid / tanh: the backward kernel needs only the output."""

    op = ""

    def forward(self, x):
        y = self.backend.unary(self.op, x)
        self.save(y)
        return y

    def backward(self, g):
        (y,) = self.saved
        return (self.backend.activation_backward(self.op, g, y),)


class Relu(Activation):
    op = "relu"


class Sigmoid(Activation):
    op = "sigmoid"


class Tanh(Activation):
    op = "tanh"


class Cast(Function):
    def forward(self, x, dtype):
        self.src = x.dtype
        return self.backend.astype(x, dtype)

    def backward(self, g):
        if not is_floating(self.src):
            return (None,)
        return (self.backend.astype(g, self.src),)


class Clone(Function):
    def forward(self, x):
        return self.backend.astype(x, x.dtype)

    def backward(self, g):
        return (g,)


class ToDevice(Function):
    """An explicit copy between devices (through host memory); the gradient goes back."""

    def forward(self, x, device):
        from ..backend import get_backend

        self.out_device = device
        self.dst_backend = get_backend(device)
        return self.dst_backend.asarray(self.backend.to_numpy(x), x.dtype)

    def backward(self, g):
        return (self.backend.asarray(self.dst_backend.to_numpy(g), g.dtype),)


class Where(Function):
    def forward(self, cond, a, b):
        self.cond = cond
        self.shapes = (a.shape, b.shape)
        return self.backend.where(cond, a, b)

    def backward(self, g):
        be = self.backend
        zero = be.full((), 0, g.dtype)
        ga = unbroadcast(be, be.where(self.cond, g, zero), self.shapes[0])
        gb = unbroadcast(be, be.where(self.cond, zero, g), self.shapes[1])
        return None, ga, gb


# ------------------------------------------------------------------ reductions


def norm_dims(dim, ndim: int, argname: str = "dim") -> tuple[int, ...]:
    if dim is None:
        return tuple(range(ndim))
    dims = dim if isinstance(dim, tuple | list) else (dim,)
    out = tuple(_norm_dim(d, ndim, argname) for d in dims)
    if len(set(out)) != len(out):
        raise ValueError(f"{argname}={dim!r} names a dimension twice")
    return out


def _expand_reduced(be, g, in_shape, axes, keepdims):
    if not keepdims:
        shape = list(in_shape)
        for ax in axes:
            shape[ax] = 1
        g = be.reshape(g, tuple(shape))
    return be.broadcast_to(g, in_shape)


class Sum(Function):
    def forward(self, x, axes, keepdims):
        self.in_shape, self.axes, self.keepdims = x.shape, axes, keepdims
        return self.backend.reduce("sum", x, axes, keepdims)

    def backward(self, g):
        be = self.backend
        return (be.ascontiguous(_expand_reduced(be, g, self.in_shape, self.axes, self.keepdims)),)


class Mean(Function):
    def forward(self, x, axes, keepdims):
        self.in_shape, self.axes, self.keepdims = x.shape, axes, keepdims
        self.count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
        return self.backend.reduce("mean", x, axes, keepdims)

    def backward(self, g):
        be = self.backend
        g = be.binary("div", g, be.full((), self.count, g.dtype))
        return (be.ascontiguous(_expand_reduced(be, g, self.in_shape, self.axes, self.keepdims)),)


class Extremum(Function):
    """amax / amin over several axes: the gradient is shared evenly among tied extrema."""

    def forward(self, x, op, axes, keepdims):
        y = self.backend.reduce(op, x, axes, keepdims)
        self.save(x, y)
        self.axes, self.keepdims = axes, keepdims
        return y

    def backward(self, g):
        be = self.backend
        x, y = self.saved
        yb = _expand_reduced(be, y, x.shape, self.axes, self.keepdims)
        mask = be.astype(be.binary("eq", x, yb), g.dtype)
        count = be.reduce("sum", mask, self.axes, True)
        share = be.binary("div", _expand_reduced(be, g, x.shape, self.axes, self.keepdims),
                          be.broadcast_to(count, x.shape))
        return (be.binary("mul", share, mask),)


class ExtremumDim(Function):
    """max / min along one dim, returning values and indices; the gradient goes to the index."""

    def forward(self, x, op, axis, keepdims):
        be = self.backend
        idx = be.arg_reduce("argmax" if op == "max" else "argmin", x, axis, True)
        values = be.take_along_axis(x, idx, axis)
        self.in_shape, self.axis, self.idx, self.keepdims = x.shape, axis, idx, keepdims
        if not keepdims:
            shape = tuple(values.shape)
            shape = shape[:axis] + shape[axis + 1:]
            values, idx = be.reshape(values, shape), be.reshape(idx, shape)
        return values, idx

    def backward(self, g):
        be = self.backend
        if not self.keepdims:
            g = be.reshape(g, self.idx.shape)
        return (be.scatter_along_axis(self.in_shape, self.idx, g, self.axis),)


MaxMin = namedtuple("MaxMin", ["values", "indices"])


# ------------------------------------------------------------------ matmul


class MatMul(Function):
    def forward(self, a, b):
        self.save(a, b)
        return self.backend.matmul(a, b)

    def backward(self, g):
        be = self.backend
        a, b = self.saved
        a1, b1 = a.ndim == 1, b.ndim == 1
        A = be.reshape(a, (1, a.shape[0])) if a1 else a
        B = be.reshape(b, (b.shape[0], 1)) if b1 else b
        if a1 and b1:
            G = be.reshape(g, (1, 1))
        elif a1:
            gs = tuple(g.shape)
            G = be.reshape(g, gs[:-1] + (1, gs[-1]))
        elif b1:
            G = be.reshape(g, tuple(g.shape) + (1,))
        else:
            G = g
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = unbroadcast(be, be.matmul(G, _swap_last(be, B)), A.shape)
            ga = be.reshape(ga, a.shape)
        if self.needs_input_grad[1]:
            gb = unbroadcast(be, be.matmul(_swap_last(be, A), G), B.shape)
            gb = be.reshape(gb, b.shape)
        return ga, gb


def _swap_last(be, a):
    axes = list(range(a.ndim))
    axes[-1], axes[-2] = axes[-2], axes[-1]
    return be.transpose(a, tuple(axes))


# ------------------------------------------------------------------ layout


class Reshape(Function):
    def forward(self, x, shape, view):
        self.in_shape = x.shape
        return self.backend.view(x, shape) if view else self.backend.reshape(x, shape)

    def backward(self, g):
        return (self.backend.reshape(g, self.in_shape),)


class Permute(Function):
    def forward(self, x, axes):
        self.inverse = tuple(int(i) for i in np.argsort(axes))
        return self.backend.transpose(x, axes)

    def backward(self, g):
        return (self.backend.transpose(g, self.inverse),)


class Expand(Function):
    def forward(self, x, shape):
        self.in_shape = x.shape
        return self.backend.broadcast_to(x, shape)

    def backward(self, g):
        return (unbroadcast(self.backend, g, self.in_shape),)


class GetItem(Function):
    def forward(self, x, index):
        self.in_shape, self.index = x.shape, index
        return self.backend.getitem(x, index)

    def backward(self, g):
        return (self.backend.getitem_backward(self.in_shape, self.index, g),)


class Cat(Function):
    def forward(self, *arrays, axis):
        self.axis = axis
        self.sizes = [a.shape[axis] for a in arrays]
        return self.backend.concatenate(arrays, axis)

    def backward(self, g):
        be = self.backend
        out, start = [], 0
        for size in self.sizes:
            index = (slice(None),) * self.axis + (slice(start, start + size),)
            out.append(be.ascontiguous(be.getitem(g, index)))
            start += size
        return tuple(out)


class Stack(Function):
    def forward(self, *arrays, axis):
        self.axis = axis
        self.count = len(arrays)
        return self.backend.stack(arrays, axis)

    def backward(self, g):
        be = self.backend
        return tuple(be.ascontiguous(be.getitem(g, (slice(None),) * self.axis + (i,)))
                     for i in range(self.count))


class Pad(Function):
    def forward(self, x, pads, mode, value):
        self.in_shape, self.pads, self.mode = x.shape, pads, mode
        return self.backend.pad(x, pads, mode, value)

    def backward(self, g):
        return (self.backend.pad_backward(g, self.in_shape, self.pads, self.mode),)


# ------------------------------------------------------------------ softmax


class Softmax(Function):
    log = False

    def forward(self, x, axis):
        y = self.backend.softmax(x, axis, self.log)
        self.save(y)
        self.axis = axis
        return y

    def backward(self, g):
        (y,) = self.saved
        return (self.backend.softmax_backward(g, y, self.axis, self.log),)


class LogSoftmax(Softmax):
    log = True


__all__ = ["as_operands", "tensor"]
