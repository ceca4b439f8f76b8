"""How far a layer or network is from translation equivariance (or invariance).

A convolution commutes with translation: shifting the input shifts the output. Zero padding
breaks this at the borders and striding and pooling break it between strides; these functions
measure by how much, with circular shifts so that no content leaves the image.
"""

from __future__ import annotations

import numbers
from fractions import Fraction

from . import functional as F
from .autograd import no_grad
from .tensor import Tensor

__all__ = ["shift", "equivariance_error", "invariance_error"]


def _shift_pair(shift, fn):
    vals = tuple(shift) if isinstance(shift, tuple | list) else (shift, shift)
    if len(vals) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral)
                             for v in vals):
        raise TypeError(f"{fn}(): shift={shift!r} must be an int or a (dy, dx) pair of ints")
    return int(vals[0]), int(vals[1])


def _roll(x: Tensor, k: int, dim: int) -> Tensor:
    n = x.shape[dim]
    k %= n
    if k == 0:
        return x
    index = [slice(None)] * x.ndim
    index[dim] = slice(n - k, n)
    tail = x[tuple(index)]
    index[dim] = slice(0, n - k)
    return F.cat([tail, x[tuple(index)]], dim)


def shift(x: Tensor, shift) -> Tensor:
    """Circularly shift the last two axes of ``x`` by ``(dy, dx)`` pixels (``torch.roll``):
    the pixel at ``(i, j)`` moves to ``(i + dy, j + dx)`` modulo the size. Differentiable."""
    dy, dx = _shift_pair(shift, "shift")
    if not isinstance(x, Tensor):
        raise TypeError(f"shift(): x must be a Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"shift(): x must have at least 2 dimensions, got shape {x.shape}")
    return _roll(_roll(x, dy, x.ndim - 2), dx, x.ndim - 1)


def _fractional_shift(x: Tensor, fy: Fraction, fx: Fraction) -> Tensor:
    """Circular shift by a fractional amount: linear interpolation between integer shifts."""
    for dim, f in ((x.ndim - 2, fy), (x.ndim - 1, fx)):
        lo = f.numerator // f.denominator
        w = float(f - lo)
        a = _roll(x, lo, dim)
        x = a if w == 0 else a * (1 - w) + _roll(x, lo + 1, dim) * w
    return x


def _norm(t: Tensor) -> float:
    return float((t * t).sum().item()) ** 0.5


def _as_input(x, fn):
    import numpy as np

    if isinstance(x, np.ndarray):  # a host array: the CPU backend, as nc.tensor() would
        from .tensor import tensor

        x = tensor(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}(): x must be a Tensor (N, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{fn}(): x must be 4-D (N, C, H, W), got shape {x.shape}")
    return x


def equivariance_error(layer, x: Tensor, shift=1) -> float:
    """Relative distance ``|f(T x) - T' f(x)| / |f(x)|`` between shifting before and after.

    ``T`` shifts the input circularly by ``shift`` pixels (an int or a ``(dy, dx)`` pair);
    ``T'`` shifts the output by the same amount in output pixels, i.e. ``shift`` times
    ``H_out / H_in`` (so ``shift=2`` through a stride-2 layer is a 1-pixel output shift).
    When that is not a whole number of output pixels the output is shifted by linear
    interpolation, which makes the measure meaningful for any shift. The answer is 0 (to
    rounding) for a convolution with ``padding_mode='circular'`` and stride 1, and small for
    zero-padded convolutions and pooling stacks, whose borders and strides break the symmetry.
    ``layer`` is any callable from (N, C, H, W) to (N, C', H', W'); it runs under ``no_grad``
    (put it in eval mode first if it has dropout or BatchNorm)."""
    fn = "equivariance_error"
    x = _as_input(x, fn)
    dy, dx = _shift_pair(shift, fn)
    with no_grad():
        fx = layer(x)
        ftx = layer(globals()["shift"](x, (dy, dx)))
    if not isinstance(fx, Tensor) or fx.ndim != 4:
        raise ValueError(f"{fn}(): the layer must return a 4-D (N, C, H, W) tensor, got "
                         f"{getattr(fx, 'shape', type(fx).__name__)}; use invariance_error() "
                         f"for classifiers")
    fy = Fraction(dy * fx.shape[2], x.shape[2])
    fxs = Fraction(dx * fx.shape[3], x.shape[3])
    expected = _fractional_shift(fx, fy, fxs)
    scale = _norm(fx)
    diff = _norm(ftx - expected)
    return diff / scale if scale > 0 else diff


def invariance_error(model, x: Tensor, shift=1) -> float:
    """Relative change ``|f(T x) - f(x)| / |f(x)|`` of a model's output (e.g. a classifier's
    logits, or softmax probabilities) when its input is circularly shifted by ``shift``
    pixels. Global pooling makes an equivariant feature extractor invariant; strides and
    padding leave a residue that this measures. Runs under ``no_grad``."""
    fn = "invariance_error"
    x = _as_input(x, fn)
    dy, dx = _shift_pair(shift, fn)
    with no_grad():
        fx = model(x)
        ftx = model(globals()["shift"](x, (dy, dx)))
    if not isinstance(fx, Tensor) or fx.shape != ftx.shape:
        raise ValueError(f"{fn}(): the model must return one tensor of a fixed shape")
    scale = _norm(fx)
    diff = _norm(ftx - fx)
    return diff / scale if scale > 0 else diff
