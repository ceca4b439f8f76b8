"""Argument checks shared by the functional ops: tensors and float tensors, PyTorch's ``_pair``,
4-D inputs, parameters."""

from __future__ import annotations

import numbers

import numpy as np

from ..tensor import Tensor, float32, is_floating


def check_tensor(x, fn: str, argname: str = "input") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}(): {argname} must be a Tensor, got {type(x).__name__}")
    return x


def check_float(x: Tensor, fn: str, argname: str = "input") -> Tensor:
    check_tensor(x, fn, argname)
    if not is_floating(x.dtype):
        raise TypeError(f"{fn}(): {argname} must be floating point, got dtype {x.dtype}")
    return x


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
