"""Elementwise ops: arithmetic with broadcasting and PyTorch's type promotion, unary math and
activations, selection and comparison, softmax/log-softmax and dropout.

Each op's :class:`~numbaconv.autograd.Function` (forward and backward side by side, arrays only
through ``self.backend``) sits beside its public function, which checks every argument
(``ValueError``/``TypeError`` naming it) before any kernel runs.
"""

from __future__ import annotations

import numbers

from ..autograd import Function
from ..tensor import Tensor, _norm_dim, is_floating
from ._args import as_operands, check_float, check_tensor, unbroadcast
from .layout import reshape

# ------------------------------------------------------------------ binary arithmetic


class Add(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return self.backend.binary("add", a, b)

    def backward(self, g):
        sa, sb = self.shapes
        return unbroadcast(self.backend, g, sa), unbroadcast(self.backend, g, sb)


def add(a, b) -> Tensor:
    return Add.apply(*as_operands(a, b, "add"))


class Sub(Function):
    def forward(self, a, b):
        self.shapes = (a.shape, b.shape)
        return self.backend.binary("sub", a, b)

    def backward(self, g):
        be = self.backend
        sa, sb = self.shapes
        gb = unbroadcast(be, be.unary("neg", g), sb) if self.needs_input_grad[1] else None
        return unbroadcast(be, g, sa), gb


def sub(a, b) -> Tensor:
    return Sub.apply(*as_operands(a, b, "sub"))


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


def mul(a, b) -> Tensor:
    return Mul.apply(*as_operands(a, b, "mul"))


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


def div(a, b) -> Tensor:
    a, b = as_operands(a, b, "div")
    if not is_floating(a.dtype):  # true division, as PyTorch: ints give float32
        a, b = a.float(), b.float()
    return Div.apply(a, b)


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


def pow(a, b) -> Tensor:
    return Pow.apply(*as_operands(a, b, "pow"))


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


def maximum(a, b) -> Tensor:
    return Maximum.apply(*as_operands(a, b, "maximum"))


class Minimum(Maximum):
    op = "minimum"


def minimum(a, b) -> Tensor:
    return Minimum.apply(*as_operands(a, b, "minimum"))


# ------------------------------------------------------------------ unary ops and activations


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


def neg(x) -> Tensor:
    return Neg.apply(check_tensor(x, "neg"))


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


def abs(x) -> Tensor:
    return Abs.apply(check_tensor(x, "abs"))


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


def _unary(cls, name):
    def f(x: Tensor) -> Tensor:
        return cls.apply(check_float(x, name))

    f.__name__ = name
    f.__doc__ = f"Elementwise {name}, differentiable."
    return f


exp = _unary(Exp, "exp")


log = _unary(Log, "log")


sqrt = _unary(Sqrt, "sqrt")


tanh = _unary(Tanh, "tanh")


sigmoid = _unary(Sigmoid, "sigmoid")


relu = _unary(Relu, "relu")


# ------------------------------------------------------------------ selection and comparison


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


def where(condition, input, other) -> Tensor:
    """``input`` where ``condition`` holds, else ``other`` (broadcasting; differentiable)."""
    check_tensor(condition, "where", "condition")
    if condition.dtype.kind != "b":
        raise TypeError(f"where(): condition must be a bool tensor, got dtype {condition.dtype}")
    a, b = as_operands(input, other, "where")
    return Where.apply(condition, a, b)


def _compare(op):
    def f(a, b) -> Tensor:
        a, b = as_operands(a, b, op)
        return Tensor._make(a.backend.binary(op, a.data, b.data), a.device)

    f.__name__ = op
    return f


eq, ne, lt, le, gt, ge = (_compare(o) for o in ("eq", "ne", "lt", "le", "gt", "ge"))


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


def _softmax(cls, fn, input, dim):
    check_float(input, fn)
    axis = _norm_dim(dim, input.ndim)
    if input.ndim == 0:
        return reshape(cls.apply(reshape(input, 1), axis=0), ())
    return cls.apply(input, axis=axis)


def _softmax_dtype(input, dtype, fn):
    if dtype is None:
        return input
    check_tensor(input, fn)
    from ..tensor import _as_dtype, is_floating

    dt = _as_dtype(dtype)
    if not is_floating(dt):
        raise TypeError(f"{fn}(): dtype={dtype!r} must be a floating-point dtype")
    return input.type(dt)  # cast first, as PyTorch (a differentiable cast)


def softmax(input, dim: int, dtype=None) -> Tensor:
    """exp(x) / sum(exp(x)) along ``dim``, shifted by the maximum for stability; ``dtype``
    casts the input first, as PyTorch's."""
    return _softmax(Softmax, "softmax", _softmax_dtype(input, dtype, "softmax"), dim)


def log_softmax(input, dim: int, dtype=None) -> Tensor:
    """x - logsumexp(x) along ``dim``; finite for logits of any size; ``dtype`` casts the
    input first."""
    return _softmax(LogSoftmax, "log_softmax", _softmax_dtype(input, dtype, "log_softmax"),
                    dim)


# ------------------------------------------------------------------ dropout


class Dropout(Function):
    def forward(self, x, p):
        self.mask = self.backend.dropout_mask(x.shape, p, x.dtype)
        return self.backend.binary("mul", x, self.mask)

    def backward(self, g):
        return (self.backend.binary("mul", g, self.mask),)


def dropout(input: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by ``1/(1-p)`` (training)."""
    check_float(input, "dropout")
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
        raise ValueError(f"dropout(): p={p!r} must be a probability in [0, 1]")
    if not training or p == 0:
        return input
    if p == 1:
        return input * 0.0
    return Dropout.apply(input, p=float(p))
