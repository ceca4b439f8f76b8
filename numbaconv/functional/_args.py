"""Argument normalisation shared by the convolution and pooling ops (PyTorch's ``_pair``)."""

from __future__ import annotations

import numbers

from ..tensor import Tensor, is_floating


def pair(value, name: str, fn: str, minimum: int) -> tuple[int, int]:
    """``3 -> (3, 3)``, ``(2, 3) -> (2, 3)``; every entry an int >= minimum."""
    if isinstance(value, tuple | list):
        if len(value) == 1:
            value = (value[0], value[0])
        if len(value) != 2:
            raise ValueError(f"{fn}(): {name}={value!r} must be an int or a pair of ints")
        out = tuple(value)
    else:
        out = (value, value)
    for v in out:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{fn}(): {name}={value!r} must be an int or a pair of ints")
        if v < minimum:
            raise ValueError(f"{fn}(): {name}={value!r} must be >= {minimum}")
    return int(out[0]), int(out[1])


def check_input4d(x, fn: str) -> tuple[Tensor, bool]:
    """A 4-D (N, C, H, W) float tensor; a 3-D (C, H, W) one is treated as a batch of one."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}(): input must be a Tensor, got {type(x).__name__}")
    if not is_floating(x.dtype):
        raise TypeError(f"{fn}(): input must be floating point, got dtype {x.dtype}")
    if x.ndim == 3:
        return x.unsqueeze(0), True
    if x.ndim != 4:
        raise ValueError(f"{fn}(): input must be 3-D (C, H, W) or 4-D (N, C, H, W), got shape "
                         f"{x.shape}")
    return x, False


def check_param(p, like: Tensor, name: str, fn: str, ndim: int) -> Tensor:
    if not isinstance(p, Tensor):
        raise TypeError(f"{fn}(): {name} must be a Tensor, got {type(p).__name__}")
    if p.ndim != ndim:
        raise ValueError(f"{fn}(): {name} must be {ndim}-D, got shape {p.shape}")
    if p.dtype != like.dtype:
        raise TypeError(f"{fn}(): {name} has dtype {p.dtype} but input has {like.dtype}; "
                        f"convert one explicitly")
    if p.device != like.device:
        raise RuntimeError(f"{fn}(): {name} is on {p.device!r} but input on {like.device!r}")
    return p


def pool_output_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """PyTorch's pooling size: ceil_mode's last window must start inside the input or left pad."""
    eff = d * (k - 1) + 1
    num = size + 2 * p - eff
    out = (-(-num // s) if ceil_mode else num // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out
