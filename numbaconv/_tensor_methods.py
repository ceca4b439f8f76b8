"""Operator overloads and op methods of :class:`Tensor`, all delegating to ``functional.ops``."""

from __future__ import annotations

from .autograd import mark_written
from .functional import ops as F
from .tensor import Tensor


def _r(fn):
    return lambda self, other: fn(other, self)


_methods = {
    "__add__": F.add, "__radd__": _r(F.add),
    "__sub__": F.sub, "__rsub__": _r(F.sub),
    "__mul__": F.mul, "__rmul__": _r(F.mul),
    "__truediv__": F.div, "__rtruediv__": _r(F.div),
    "__pow__": F.pow, "__rpow__": _r(F.pow),
    "__matmul__": F.matmul, "__rmatmul__": _r(F.matmul),
    "__neg__": F.neg, "__abs__": F.abs,
    "__eq__": F.eq, "__ne__": F.ne, "__lt__": F.lt, "__le__": F.le,
    "__gt__": F.gt, "__ge__": F.ge,
    "__getitem__": F.getitem,
    "add": F.add, "sub": F.sub, "mul": F.mul, "div": F.div, "pow": F.pow,
    "matmul": F.matmul, "neg": F.neg, "abs": F.abs, "exp": F.exp, "log": F.log,
    "sqrt": F.sqrt, "tanh": F.tanh, "sigmoid": F.sigmoid, "relu": F.relu,
    "maximum": F.maximum, "minimum": F.minimum,
    "sum": F.sum, "mean": F.mean, "max": F.max, "min": F.min, "amax": F.amax, "amin": F.amin,
    "argmax": F.argmax, "argmin": F.argmin,
    "reshape": F.reshape, "view": F.view, "flatten": F.flatten, "permute": F.permute,
    "transpose": F.transpose, "unsqueeze": F.unsqueeze, "squeeze": F.squeeze,
    "expand": F.expand, "softmax": F.softmax, "log_softmax": F.log_softmax,
    "eq": F.eq, "ne": F.ne, "lt": F.lt, "le": F.le, "gt": F.gt, "ge": F.ge,
}

for _name, _fn in _methods.items():
    setattr(Tensor, _name, _fn)

Tensor.__hash__ = object.__hash__  # __eq__ is elementwise, identity stays the hash


def _view_as(self, other):
    return F.view(self, other.shape)


def _iter(self):
    if self.ndim == 0:
        raise TypeError("iteration over a 0-d tensor")
    for i in range(self.shape[0]):
        yield self[i]


Tensor.view_as = _view_as
Tensor.reshape_as = lambda self, other: F.reshape(self, other.shape)
Tensor.__iter__ = _iter


def _inplace(name, fn):
    def method(self, other):
        from .autograd import is_grad_enabled, no_grad

        if is_grad_enabled() and self.requires_grad:
            raise RuntimeError(
                f"{name}: in-place update of a tensor that requires grad would corrupt its "
                f"graph; do it inside numbaconv.no_grad()"
            )
        with no_grad():
            result = fn(self, other)
        if result.shape != self.shape:
            raise ValueError(f"{name}: result of shape {result.shape} does not fit the tensor's "
                             f"shape {self.shape}")
        if result.dtype != self.dtype:
            raise TypeError(f"{name}: result has dtype {result.dtype}, the tensor {self.dtype}")
        self.backend.copy_(self.data, result.data)
        mark_written(self)
        return self

    method.__name__ = name
    return method


for _name, _fn in (("add_", F.add), ("sub_", F.sub), ("mul_", F.mul), ("div_", F.div)):
    setattr(Tensor, _name, _inplace(_name, _fn))
    setattr(Tensor, "__i" + _name[:-1].replace("div", "truediv") + "__", _inplace(_name, _fn))


def _copy_(self, src):
    """Copy ``src``'s values into this tensor (same shape, dtype and device)."""
    return _inplace("copy_", lambda a, b: b if isinstance(b, Tensor) else F.add(a * 0, b))(
        self, src)


Tensor.copy_ = _copy_


def _setitem(self, index, value):
    """``t[index] = value`` in place (a number or a tensor broadcastable to the selection).

    Like the other in-place ops it is refused on a tensor that requires grad while gradients
    are being recorded."""
    from .autograd import is_grad_enabled

    if is_grad_enabled() and self.requires_grad:
        raise RuntimeError("__setitem__: in-place assignment to a tensor that requires grad "
                           "would corrupt its graph; do it inside numbaconv.no_grad()")
    parts = index if isinstance(index, tuple) else (index,)
    parts = tuple(F._index_part(p, self.device) for p in parts)
    if isinstance(value, Tensor):
        if value.device != self.device:
            raise RuntimeError(f"__setitem__: value is on {value.device!r}, tensor on "
                               f"{self.device!r}")
        if value.dtype != self.dtype:
            raise TypeError(f"__setitem__: value has dtype {value.dtype}, tensor {self.dtype}")
        data = value.data
    else:
        import numbers

        if not isinstance(value, numbers.Number):
            raise TypeError(f"__setitem__: value must be a number or a Tensor, got "
                            f"{type(value).__name__}")
        data = self.backend.full((), value, self.dtype)
    self.backend.setitem(self.data, parts, data)
    mark_written(self)


Tensor.__setitem__ = _setitem
