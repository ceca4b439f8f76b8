"""Shape, indexing and joining: reshape/view/flatten, permute/transpose, (un)squeeze,
expand, indexing, cat/stack and pad. Differentiable; views are never written through.

Each op's Function sits beside its public function, which checks the arguments first.
"""

from __future__ import annotations

import builtins
import numbers

import numpy as np

from ..autograd import Function
from ..tensor import Tensor, _norm_dim
from ._args import check_tensor, unbroadcast


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


# ------------------------------------------------------------------ reshaping


class Reshape(Function):
    def forward(self, x, shape, view):
        self.in_shape = x.shape
        return self.backend.view(x, shape) if view else self.backend.reshape(x, shape)

    def backward(self, g):
        return (self.backend.reshape(g, self.in_shape),)


def reshape(x, *shape) -> Tensor:
    check_tensor(x, "reshape")
    shape = _resolve_shape(x, _shape_arg(shape, "reshape"), "reshape")
    if shape == x.shape:
        return x
    return Reshape.apply(x, shape=shape, view=False)


def view(x, *shape) -> Tensor:
    check_tensor(x, "view")
    shape = _resolve_shape(x, _shape_arg(shape, "view"), "view")
    return Reshape.apply(x, shape=shape, view=True)


def flatten(x, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    check_tensor(x, "flatten")
    if x.ndim == 0:
        return reshape(x, 1)
    s = _norm_dim(start_dim, x.ndim, "start_dim")
    e = _norm_dim(end_dim, x.ndim, "end_dim")
    if s > e:
        raise ValueError(f"flatten(): start_dim={start_dim} comes after end_dim={end_dim}")
    shape = x.shape[:s] + (int(np.prod(x.shape[s:e + 1])),) + x.shape[e + 1:]
    return reshape(x, shape)


class Permute(Function):
    def forward(self, x, axes):
        self.inverse = tuple(int(i) for i in np.argsort(axes))
        return self.backend.transpose(x, axes)

    def backward(self, g):
        return (self.backend.transpose(g, self.inverse),)


def permute(x, *dims) -> Tensor:
    check_tensor(x, "permute")
    dims = _shape_arg(dims, "permute")
    if len(dims) != x.ndim:
        raise ValueError(f"permute(): dims={dims} has {len(dims)} entries for a tensor with "
                         f"{x.ndim} dimensions")
    axes = tuple(_norm_dim(d, x.ndim, "dims") for d in dims)
    if sorted(axes) != list(range(x.ndim)):
        raise ValueError(f"permute(): dims={dims} is not a permutation of the dimensions")
    return Permute.apply(x, axes=axes)


def transpose(x, dim0: int, dim1: int) -> Tensor:
    check_tensor(x, "transpose")
    axes = list(range(x.ndim))
    a, b = _norm_dim(dim0, x.ndim, "dim0"), _norm_dim(dim1, x.ndim, "dim1")
    if x.ndim < 2:
        return x
    axes[a], axes[b] = axes[b], axes[a]
    return Permute.apply(x, axes=tuple(axes))


def unsqueeze(x, dim: int) -> Tensor:
    check_tensor(x, "unsqueeze")
    d = _norm_dim(dim, x.ndim + 1, "dim")
    return reshape(x, x.shape[:d] + (1,) + x.shape[d:])


def squeeze(x, dim=None) -> Tensor:
    check_tensor(x, "squeeze")
    if dim is None:
        return reshape(x, tuple(s for s in x.shape if s != 1))
    d = _norm_dim(dim, x.ndim, "dim")
    if x.shape[d] != 1:
        return x
    return reshape(x, x.shape[:d] + x.shape[d + 1:])


class Expand(Function):
    def forward(self, x, shape):
        self.in_shape = x.shape
        return self.backend.broadcast_to(x, shape)

    def backward(self, g):
        return (unbroadcast(self.backend, g, self.in_shape),)


def expand(x, *shape) -> Tensor:
    check_tensor(x, "expand")
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
    return Expand.apply(x, shape=full)


# ------------------------------------------------------------------ indexing


class GetItem(Function):
    def forward(self, x, index):
        self.in_shape, self.index = x.shape, index
        return self.backend.getitem(x, index)

    def backward(self, g):
        return (self.backend.getitem_backward(self.in_shape, self.index, g),)


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
    check_tensor(x, "getitem")
    parts = index if isinstance(index, tuple) else (index,)
    parts = tuple(_index_part(p, x.device) for p in parts)
    return GetItem.apply(x, index=parts)


# ------------------------------------------------------------------ joining and padding


def _check_seq(tensors, fn):
    if isinstance(tensors, Tensor) or not isinstance(tensors, list | tuple):
        raise TypeError(f"{fn}(): tensors must be a list or tuple of Tensors")
    if len(tensors) == 0:
        raise ValueError(f"{fn}(): tensors must not be empty")
    for i, t in enumerate(tensors):
        check_tensor(t, fn, f"tensors[{i}]")
    first = tensors[0]
    for i, t in enumerate(tensors[1:], 1):
        if t.dtype != first.dtype:
            raise TypeError(f"{fn}(): tensors[{i}] has dtype {t.dtype}, tensors[0] {first.dtype}")
        if t.device != first.device:
            raise RuntimeError(f"{fn}(): tensors[{i}] is on {t.device!r}, tensors[0] on "
                               f"{first.device!r}")
    return tensors


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
    return Cat.apply(*tensors, axis=d)


class Stack(Function):
    def forward(self, *arrays, axis):
        self.axis = axis
        self.count = len(arrays)
        return self.backend.stack(arrays, axis)

    def backward(self, g):
        be = self.backend
        return tuple(be.ascontiguous(be.getitem(g, (slice(None),) * self.axis + (i,)))
                     for i in range(self.count))


def stack(tensors, dim: int = 0) -> Tensor:
    tensors = _check_seq(tensors, "stack")
    ref = tensors[0]
    for i, t in enumerate(tensors):
        if t.shape != ref.shape:
            raise ValueError(f"stack(): tensors[{i}] has shape {t.shape}, expected {ref.shape}")
    d = _norm_dim(dim, ref.ndim + 1)
    return Stack.apply(*tensors, axis=d)


class Pad(Function):
    def forward(self, x, pads, mode, value):
        self.in_shape, self.pads, self.mode = x.shape, pads, mode
        return self.backend.pad(x, pads, mode, value)

    def backward(self, g):
        return (self.backend.pad_backward(g, self.in_shape, self.pads, self.mode),)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge",
              "circular": "wrap"}


def pad(input, pad, mode: str = "constant", value: float = 0.0) -> Tensor:
    """Pad the last ``len(pad) // 2`` dims, ``pad = (left, right, top, bottom, ...)`` as PyTorch."""
    check_tensor(input, "pad")
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
    return Pad.apply(input, pads=tuple(widths), mode=_PAD_MODES[mode], value=value)
