"""Reductions: sum, mean, max/min (whole tensor or along a dim, with indices), amax/amin,
argmax/argmin.

Each op's Function sits beside its public function, which checks the arguments first.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from ..autograd import Function
from ..tensor import Tensor, _norm_dim
from ._args import check_float, check_tensor


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


# ------------------------------------------------------------------ sum and mean


class Sum(Function):
    def forward(self, x, axes, keepdims):
        self.in_shape, self.axes, self.keepdims = x.shape, axes, keepdims
        return self.backend.reduce("sum", x, axes, keepdims)

    def backward(self, g):
        be = self.backend
        return (be.ascontiguous(_expand_reduced(be, g, self.in_shape, self.axes, self.keepdims)),)


def sum(x, dim=None, keepdim: bool = False) -> Tensor:
    check_tensor(x, "sum")
    if x.dtype.kind == "b":
        x = x.long()
    return Sum.apply(x, axes=norm_dims(dim, x.ndim), keepdims=bool(keepdim))


class Mean(Function):
    def forward(self, x, axes, keepdims):
        self.in_shape, self.axes, self.keepdims = x.shape, axes, keepdims
        self.count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
        return self.backend.reduce("mean", x, axes, keepdims)

    def backward(self, g):
        be = self.backend
        g = be.binary("div", g, be.full((), self.count, g.dtype))
        return (be.ascontiguous(_expand_reduced(be, g, self.in_shape, self.axes, self.keepdims)),)


def mean(x, dim=None, keepdim: bool = False) -> Tensor:
    check_float(x, "mean")
    axes = norm_dims(dim, x.ndim)  # a mean over an empty dim is NaN, as in PyTorch
    return Mean.apply(x, axes=axes, keepdims=bool(keepdim))


# ------------------------------------------------------------------ max, min and their positions


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
        check_tensor(x, op)
        _check_extent(x, dim, op)
        if dim is None:
            return Extremum.apply(x, op=op, axes=tuple(range(x.ndim)), keepdims=False)
        if isinstance(dim, tuple | list):
            raise TypeError(f"{op}(): dim must be an int (use a{op}() for several dims)")
        axis = _norm_dim(dim, x.ndim)
        values, indices = ExtremumDim.apply(x, op=op, axis=axis, keepdims=bool(keepdim))
        return MaxMin(values, indices)

    f.__name__ = op
    f.__doc__ = (f"``{op}(x)`` is the {op} of all elements; ``{op}(x, dim)`` returns "
                 f"``(values, indices)`` along ``dim``, as PyTorch does.")
    return f


max = _extremum("max")


min = _extremum("min")


def amax(x, dim=None, keepdim: bool = False) -> Tensor:
    check_tensor(x, "amax")
    return Extremum.apply(x, op="max", axes=norm_dims(dim, x.ndim), keepdims=bool(keepdim))


def amin(x, dim=None, keepdim: bool = False) -> Tensor:
    check_tensor(x, "amin")
    return Extremum.apply(x, op="min", axes=norm_dims(dim, x.ndim), keepdims=bool(keepdim))


def _arg(op):
    def f(x, dim=None, keepdim: bool = False) -> Tensor:
        check_tensor(x, op)
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
