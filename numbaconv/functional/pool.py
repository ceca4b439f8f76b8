"""Pooling (max, average, adaptive) and nearest-neighbour upsampling.

Output sizes follow PyTorch exactly::

    H_out = floor_or_ceil((H_in + 2*padding - dilation*(kernel_size - 1) - 1) / stride) + 1

and with ``ceil_mode`` the last window must start inside the input or the left padding.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..autograd import Function
from ..tensor import Tensor
from ._args import check_input4d, pair, pool_output_size


class MaxPool2d(Function):
    def forward(self, x, *, kernel, stride, padding, dilation, out_hw):
        self.in_shape = x.shape
        self.geometry = (kernel, stride, padding, dilation)
        y, idx = self.backend.max_pool2d(x, kernel, stride, padding, dilation, out_hw)
        self.idx = idx
        return y, idx

    def backward(self, g):
        return (self.backend.max_pool2d_backward(g, self.idx, self.in_shape, *self.geometry),)


class AvgPool2d(Function):
    def forward(self, x, *, kernel, stride, padding, out_hw, count_include_pad, divisor):
        self.in_shape = x.shape
        self.args = (kernel, stride, padding, count_include_pad, divisor)
        return self.backend.avg_pool2d(x, kernel, stride, padding, out_hw, count_include_pad,
                                       divisor)

    def backward(self, g):
        return (self.backend.avg_pool2d_backward(g, self.in_shape, *self.args),)


class AdaptiveAvgPool2d(Function):
    def forward(self, x, *, out_hw):
        self.in_shape = x.shape
        return self.backend.adaptive_pool2d(x, out_hw, "avg")[0]

    def backward(self, g):
        return (self.backend.adaptive_avg_pool2d_backward(g, self.in_shape),)


class AdaptiveMaxPool2d(Function):
    def forward(self, x, *, out_hw):
        self.in_shape = x.shape
        y, idx = self.backend.adaptive_pool2d(x, out_hw, "max")
        self.idx = idx
        return y, idx

    def backward(self, g):
        return (self.backend.adaptive_max_pool2d_backward(g, self.idx, self.in_shape),)


class UpsampleNearest2d(Function):
    def forward(self, x, *, out_hw, scales):
        self.in_shape, self.scales = x.shape, scales
        return self.backend.upsample_nearest2d(x, out_hw, scales)

    def backward(self, g):
        return (self.backend.upsample_nearest2d_backward(g, self.in_shape, self.scales),)


def _pool_args(fn, input, kernel_size, stride, padding, dilation, ceil_mode):
    x, unbatched = check_input4d(input, fn)
    kernel = pair(kernel_size, "kernel_size", fn, 1)
    stride = kernel if stride is None or stride == () or stride == [] else pair(
        stride, "stride", fn, 1)
    padding = pair(padding, "padding", fn, 0)
    dilation = pair(dilation, "dilation", fn, 1)
    for i in range(2):
        if padding[i] > kernel[i] // 2:
            raise ValueError(f"{fn}(): padding={padding} must be at most half of kernel_size="
                             f"{kernel}")
    out_hw = tuple(pool_output_size(x.shape[2 + i], kernel[i], stride[i], padding[i],
                                    dilation[i], bool(ceil_mode)) for i in range(2))
    if out_hw[0] < 1 or out_hw[1] < 1:
        raise ValueError(f"{fn}(): input of spatial size {x.shape[2:]} is too small for "
                         f"kernel_size={kernel}, padding={padding}, dilation={dilation} "
                         f"(output would be {out_hw})")
    return x, unbatched, kernel, stride, padding, dilation, out_hw


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False, return_indices: bool = False):
    """Max over each window; the gradient goes to the first maximum (PyTorch's tie rule), and a
    NaN in a window propagates. ``return_indices`` gives flat ``h*W + w`` indices per plane."""
    x, unbatched, kernel, stride, padding, dilation, out_hw = _pool_args(
        "max_pool2d", input, kernel_size, stride, padding, dilation, ceil_mode)
    y, idx = MaxPool2d.apply(x, kernel=kernel, stride=stride, padding=padding,
                             dilation=dilation, out_hw=out_hw)
    if unbatched:
        y, idx = y.squeeze(0), idx.squeeze(0)
    return (y, idx) if return_indices else y


def avg_pool2d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override=None) -> Tensor:
    """Mean over each window, as ``torch.nn.functional.avg_pool2d``."""
    if divisor_override is not None and (
            isinstance(divisor_override, bool) or not isinstance(divisor_override, int)
            or divisor_override == 0):
        raise ValueError(f"avg_pool2d(): divisor_override={divisor_override!r} must be a "
                         f"nonzero int or None")
    x, unbatched, kernel, stride, padding, _, out_hw = _pool_args(
        "avg_pool2d", input, kernel_size, stride, padding, 1, ceil_mode)
    y = AvgPool2d.apply(x, kernel=kernel, stride=stride, padding=padding, out_hw=out_hw,
                        count_include_pad=bool(count_include_pad), divisor=divisor_override)
    return y.squeeze(0) if unbatched else y


def _adaptive_out(fn, x, output_size):
    if isinstance(output_size, tuple | list):
        if len(output_size) != 2:
            raise ValueError(f"{fn}(): output_size={output_size!r} must be an int or a pair")
        sizes = tuple(x.shape[2 + i] if s is None else s for i, s in enumerate(output_size))
    else:
        sizes = (output_size, output_size)
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1:
            raise ValueError(f"{fn}(): output_size={output_size!r} must hold positive ints")
    return tuple(int(s) for s in sizes)


def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    x, unbatched = check_input4d(input, "adaptive_avg_pool2d")
    out_hw = _adaptive_out("adaptive_avg_pool2d", x, output_size)
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"adaptive_avg_pool2d(): input of shape {x.shape} is empty")
    y = AdaptiveAvgPool2d.apply(x, out_hw=out_hw)
    return y.squeeze(0) if unbatched else y


def adaptive_max_pool2d(input: Tensor, output_size, return_indices: bool = False):
    x, unbatched = check_input4d(input, "adaptive_max_pool2d")
    out_hw = _adaptive_out("adaptive_max_pool2d", x, output_size)
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"adaptive_max_pool2d(): input of shape {x.shape} is empty")
    y, idx = AdaptiveMaxPool2d.apply(x, out_hw=out_hw)
    if unbatched:
        y, idx = y.squeeze(0), idx.squeeze(0)
    return (y, idx) if return_indices else y


def interpolate(input: Tensor, size=None, scale_factor=None, mode: str = "nearest",
                align_corners=None, recompute_scale_factor=None) -> Tensor:
    """Upsample (or downsample) an (N, C, L) or (N, C, H, W) input, as PyTorch: a 3-D input is
    a batch of 1-D signals (never one unbatched image). ``mode='nearest'`` as PyTorch computes
    it: source index ``floor(dst * scale)``, with scale ``1/scale_factor`` or ``in/out``."""
    fn = "interpolate"
    if isinstance(input, Tensor) and input.ndim == 3:
        def one(v, name):
            if isinstance(v, tuple | list):
                if len(v) != 1:
                    raise ValueError(f"{fn}(): {name}={v!r} for a 3-D (N, C, L) input must be "
                                     f"one value")
                return v[0]
            return v
        size1 = None if size is None else (1, one(size, "size"))
        scale1 = None if scale_factor is None else (1.0, one(scale_factor, "scale_factor"))
        y = interpolate(input.unsqueeze(2), size1, scale1, mode, align_corners,
                        recompute_scale_factor)
        return y.squeeze(2)
    if isinstance(input, Tensor) and input.ndim != 4:
        raise ValueError(f"{fn}(): input must be 3-D (N, C, L) or 4-D (N, C, H, W), got shape "
                         f"{input.shape}")
    x, unbatched = check_input4d(input, fn)
    if mode != "nearest":
        raise ValueError(f"{fn}(): mode={mode!r} is not supported; expected 'nearest'")
    if align_corners is not None:
        raise ValueError(f"{fn}(): align_corners only applies to linear modes, got "
                         f"align_corners={align_corners!r} with mode='nearest'")
    if (size is None) == (scale_factor is None):
        raise ValueError(f"{fn}(): give exactly one of size and scale_factor")
    in_hw = x.shape[2:]
    if size is not None:
        out_hw = pair(size, "size", fn, 1)
        scales = tuple(float(np.float32(in_hw[i]) / np.float32(out_hw[i])) for i in range(2))
    else:
        sf = scale_factor if isinstance(scale_factor, tuple | list) else (scale_factor,) * 2
        if len(sf) != 2 or any(isinstance(s, bool) or not isinstance(s, numbers.Real)
                               or not s > 0 for s in sf):
            raise ValueError(f"{fn}(): scale_factor={scale_factor!r} must be a positive number "
                             f"or a pair of them")
        out_hw = tuple(int(math.floor(in_hw[i] * float(sf[i]))) for i in range(2))
        if out_hw[0] < 1 or out_hw[1] < 1:
            raise ValueError(f"{fn}(): scale_factor={scale_factor!r} gives an empty output "
                             f"{out_hw}")
        if recompute_scale_factor:
            scales = tuple(float(np.float32(in_hw[i]) / np.float32(out_hw[i])) for i in range(2))
        else:
            scales = (1.0 / float(sf[0]), 1.0 / float(sf[1]))
    y = UpsampleNearest2d.apply(x, out_hw=out_hw, scales=scales)
    return y.squeeze(0) if unbatched else y
