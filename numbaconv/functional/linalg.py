"""Matrix products: ``matmul`` (NumPy's broadcasting rules) and ``linear``.

Each op's Function sits beside its public function, which checks the arguments first.
"""

from __future__ import annotations

import numpy as np

from ..autograd import Function
from ..tensor import Tensor
from ._args import as_operands, check_float, check_tensor, unbroadcast


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


def matmul(a, b) -> Tensor:
    check_tensor(a, "matmul", "input")
    check_tensor(b, "matmul", "other")
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
    a, b = as_operands(a, b, "matmul")
    return MatMul.apply(a, b)


# ------------------------------------------------------------------ linear


class Linear(Function):
    """y = x @ W^T + b over any leading dims; one op on the tape instead of three (and, on
    the GPU, one GEMM that reads W transposed in place and adds the bias as it stores)."""

    def forward(self, x, w, b=None):
        be = self.backend
        shape = tuple(x.shape)
        x2 = be.reshape(x, (-1, shape[-1]))
        self.save(x2, w)
        self.x_shape = shape
        y = be.linear(x2, w, b)
        return be.reshape(y, shape[:-1] + (tuple(w.shape)[0],))

    def backward(self, g):
        be = self.backend
        x2, w = self.saved
        needs = self.needs_input_grad
        g2 = be.reshape(g, (-1, tuple(g.shape)[-1]))
        gx = be.reshape(be.matmul(g2, w), self.x_shape) if needs[0] else None
        gw = be.matmul_tn(g2, x2) if needs[1] else None
        grads = [gx, gw]
        if len(needs) == 3:
            grads.append(be.reduce("sum", g2, (0,), False) if needs[2] else None)
        return tuple(grads)


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``input @ weight.T + bias``, as ``torch.nn.functional.linear``; weight is (out, in)."""
    check_float(input, "linear")
    check_float(weight, "linear", "weight")
    if weight.ndim != 2:
        raise ValueError(f"linear(): weight must be 2-D (out_features, in_features), got "
                         f"{weight.shape}")
    if input.ndim == 0 or input.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear(): input of shape {input.shape} has {input.shape[-1:]} "
                         f"features, weight expects {weight.shape[1]}")
    args = [input, weight]
    if bias is not None:
        check_float(bias, "linear", "bias")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"linear(): bias of shape {bias.shape}, expected "
                             f"({weight.shape[0]},)")
        args.append(bias)
    for t in args[1:]:
        if t.dtype != input.dtype:
            raise TypeError(f"linear(): input is {input.dtype} but a parameter is {t.dtype}")
    return Linear.apply(*args)
