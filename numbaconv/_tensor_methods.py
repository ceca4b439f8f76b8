"""Operator overloads and op methods of :class:`Tensor`, delegating to ``numbaconv.functional``."""

from __future__ import annotations

from .autograd import mark_written

# the op families' modules themselves: this runs while numbaconv.functional is still importing
from .functional import elementwise as E
from .functional import layout as L
from .functional import linalg as LA
from .functional import reduce as R
from .tensor import Tensor


def _r(fn):
    return lambda self, other: fn(other, self)


_methods = {
    "__add__": E.add, "__radd__": _r(E.add),
    "__sub__": E.sub, "__rsub__": _r(E.sub),
    "__mul__": E.mul, "__rmul__": _r(E.mul),
    "__truediv__": E.div, "__rtruediv__": _r(E.div),
    "__pow__": E.pow, "__rpow__": _r(E.pow),
    "__matmul__": LA.matmul, "__rmatmul__": _r(LA.matmul),
    "__neg__": E.neg, "__abs__": E.abs,
    "__eq__": E.eq, "__ne__": E.ne, "__lt__": E.lt, "__le__": E.le,
    "__gt__": E.gt, "__ge__": E.ge,
    "__getitem__": L.getitem,
    "add": E.add, "sub": E.sub, "mul": E.mul, "div": E.div, "pow": E.pow,
    "matmul": LA.matmul, "neg": E.neg, "abs": E.abs, "exp": E.exp, "log": E.log,
    "sqrt": E.sqrt, "tanh": E.tanh, "sigmoid": E.sigmoid, "relu": E.relu,
    "maximum": E.maximum, "minimum": E.minimum,
    "sum": R.sum, "mean": R.mean, "max": R.max, "min": R.min, "amax": R.amax, "amin": R.amin,
    "argmax": R.argmax, "argmin": R.argmin,
    "reshape": L.reshape, "view": L.view, "flatten": L.flatten, "permute": L.permute,
    "transpose": L.transpose, "unsqueeze": L.unsqueeze, "squeeze": L.squeeze,
    "expand": L.expand, "softmax": E.softmax, "log_softmax": E.log_softmax,
    "eq": E.eq, "ne": E.ne, "lt": E.lt, "le": E.le, "gt": E.gt, "ge": E.ge,
}

for _name, _fn in _methods.items():
    setattr(Tensor, _name, _fn)

Tensor.__hash__ = object.__hash__  # __eq__ is elementwise, identity stays the hash


def _view_as(self, other):
    return L.view(self, other.shape)


def _iter(self):
    if self.ndim == 0:
        raise TypeError("iteration over a 0-d tensor")
    for i in range(self.shape[0]):
        yield self[i]


Tensor.view_as = _view_as
Tensor.reshape_as = lambda self, other: L.reshape(self, other.shape)
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


for _name, _fn in (("add_", E.add), ("sub_", E.sub), ("mul_", E.mul), ("div_", E.div)):
    setattr(Tensor, _name, _inplace(_name, _fn))
    setattr(Tensor, "__i" + _name[:-1].replace("div", "truediv") + "__", _inplace(_name, _fn))


def _copy_(self, src):
    """Copy ``src``'s values into this tensor (same shape, dtype and device)."""
    return _inplace("copy_", lambda a, b: b if isinstance(b, Tensor) else E.add(a * 0, b))(
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
    parts = tuple(L._index_part(p, self.device) for p in parts)
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
