"""2-D convolution (cross-correlation, NCHW) and its gradients on the CPU.

:func:`conv2d_forward` and :func:`conv2d_backward` are the entry points; for each call they pick
one of five strategies by the rules in ``plan.py`` (each with the measurements behind it):

* **Winograd's F(2x2, 3x3)** (``winograd.py``; 3x3 stride-1 layers with 16+ channels: ResNet's
  and VGG's 32- to 512-channel layers, forward and both gradients): 16 products per set of 2x2
  output tiles instead of 36 multiply-adds per output, 2.25x fewer FLOPs, at the cost of
  transforms that move every value twice.
* **implicit GEMM** (``implicit.py``; stride 1 with 8+ input channels per group, and strided
  layers on their stride phases: VGG, ResNet and Inception layers): one BLAS product per tap,
  read in place from the padded planes, accumulated over the taps; no packed columns.
* **flat direct kernels** (``flat.py``; stride 1, few channels: LeNet, depthwise layers): every
  tap one long contiguous multiply-add over the flattened padded plane.
* **direct row loops** (``direct.py``; depthwise-like groups, where a GEMM would have one row).
* **im2col + BLAS** (``gemm.py``; strided layers, weight gradients, anything the others do not
  take, and everything where NumPy's BLAS cannot be called from a kernel).

``layout.py`` holds what several strategies share: padding, im2col/col2im, the flat layout of
stride-1 convolutions, the stride phases. Shapes, strides, padding and dilation arrive already
validated. Scratch matrices are reused between calls, or allocated per task and recycled by the
allocator (page faults on fresh buffers cost more than the packing itself).
"""

from __future__ import annotations

import numba
import numpy as np

from .. import blas as blas_k
from . import direct, flat, gemm, implicit, layout, plan, winograd
from .layout import params_from_parts

# the modules that hold kernels, one per strategy and the shared layout helpers
KERNEL_MODULES = (direct, flat, gemm, implicit, layout, winograd)


def output_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def conv2d_forward(x, w, b, stride, padding, dilation, groups):
    """y = conv2d(x, w) + b for NCHW ``x`` and ``w`` of shape (O, C/groups, kH, kW)."""
    n_img, _, h, wd = x.shape
    n_out, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh_n, ow_n = output_size(h, kh, sh, ph, dh), output_size(wd, kw, sw, pw, dw)
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w)
    og = n_out // groups
    y = np.empty((n_img, n_out, oh_n, ow_n), dtype=x.dtype)
    if y.size == 0:
        return y
    if plan.use_winograd(kh, kw, stride, dilation, cg, og):
        return winograd.conv(x, w, b, padding, groups, y)
    if plan.use_implicit(stride, cg, og) or plan.use_implicit_strided(stride, cg, og, kh, kw):
        return implicit.forward(x, w, b, stride, padding, dilation, groups, y)
    n_threads, junk = numba.get_num_threads(), plan.flat_junk(x.shape, w.shape, padding, dilation)
    use_direct = plan.use_direct(cg, og, stride, n_img, n_threads, junk)
    if use_direct or plan.use_flat(stride, cg, og, kh, kw, n_img, n_threads, junk):
        has_bias = b is not None
        bias = np.ascontiguousarray(b) if has_bias else np.zeros(1, x.dtype)
        if use_direct:
            direct.direct_forward(x, w, bias, has_bias, sh, sw, ph, pw, dh, dw, groups, y)
        else:
            flat.flat_forward(x, w, bias, has_bias, ph, pw, dh, dw, groups, y)
        return y
    return gemm.forward(x, w, b, stride, padding, dilation, groups, y)


def conv2d_backward(gy, x, w, stride, padding, dilation, groups, need_input, need_weight,
                    need_bias, x_shape=None, w_shape=None):
    """(grad_input, grad_weight, grad_bias) of conv2d, each computed only where asked for
    (None otherwise). ``x`` is read only for the weight gradient (else it may be None, with
    ``x_shape`` given) and ``w`` only for the input gradient (else None, with ``w_shape``)."""
    gy = np.ascontiguousarray(gy)
    if x is not None:
        x = np.ascontiguousarray(x)
        x_shape = x.shape
    if w is not None:
        w = np.ascontiguousarray(w)
        w_shape = w.shape
    x_shape, w_shape = tuple(x_shape), tuple(w_shape)
    n_out, cg, kh, kw = w_shape
    n_img = x_shape[0]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh_n, ow_n = gy.shape[2], gy.shape[3]
    og = n_out // groups
    dtype = gy.dtype
    if gy.size == 0 or n_img == 0:
        return (np.zeros(x_shape, dtype) if need_input else None,
                np.zeros(w_shape, dtype) if need_weight else None,
                np.zeros(n_out, dtype) if need_bias else None)
    gx = np.empty(x_shape, dtype=dtype) if need_input else None
    gw = gb = None
    gy3 = gy.reshape(n_img, n_out, oh_n * ow_n)

    def input_only():
        return conv2d_backward(gy, None, w, stride, padding, dilation, groups, True, False,
                               False, x_shape, w_shape)[0]

    def params_only():
        return conv2d_backward(gy, x, None, stride, padding, dilation, groups, False,
                               need_weight, need_bias, x_shape, w_shape)[1:]

    # F(2x2, 3x3) for the input and for the weight gradient, each where it pays (see plan.py)
    wino_x = (need_input and plan.use_winograd(kh, kw, stride, dilation, og, cg)
              and winograd.grad_input(gy, w, padding, groups, gx))
    wino_w = need_weight and plan.use_winograd(kh, kw, stride, dilation, cg, og, weight=True)
    if wino_x or wino_w:
        if need_input and not wino_x:
            gx = input_only()
        if wino_w:
            gw, gb = winograd.grad_weight(gy, x, padding, groups, need_bias)
        elif need_weight or need_bias:
            gw, gb = params_only()
        return gx, gw, gb
    if need_input and (
            plan.use_implicit(stride, cg, og)
            and implicit.grad_input(gy, w, padding, dilation, groups, gx)
            or plan.use_implicit_input_strided(stride, cg, og, kh, kw)
            and implicit.grad_input_strided(gy, w, stride, padding, dilation, groups, gx)):
        if need_weight or need_bias:
            gw, gb = params_only()
        return gx, gw, gb
    n_threads = numba.get_num_threads()
    if plan.use_direct(cg, og, stride, n_img, n_threads,
                       plan.flat_junk(x_shape, w_shape, padding, dilation)):
        if need_bias:
            gb = np.empty(n_out, dtype=dtype)
            direct.bias_grad(gy3, gb)
        if need_input:
            direct.direct_grad_input(gy, w, sh, sw, ph, pw, dh, dw, groups, gx)
        if need_weight:
            gw = np.empty(w_shape, dtype=dtype)
            direct.direct_grad_weight(gy, x, sh, sw, ph, pw, dh, dw, groups, gw)
        return gx, gw, gb
    if need_weight and plan.use_flat_params(stride, cg, og, n_img, n_threads):
        if need_input and not plan.use_flat_input(stride, cg, og, kh, kw, n_img, n_threads):
            gx = input_only()
        elif need_input:
            flat.grad_input(gy, w, ph, pw, dh, dw, groups, gx)
        gw, gb = flat.grad_params(gy, x, w_shape, padding, dilation, groups, n_threads)
        return gx, gw, (gb if need_bias else None)
    if need_input and not (need_weight or need_bias) and plan.use_flat_input(
            stride, cg, og, kh, kw, n_img, n_threads):
        flat.grad_input(gy, w, ph, pw, dh, dw, groups, gx)
        return gx, None, None
    cols = gemm.ColumnPlan(x_shape, w_shape, stride, padding, dilation, groups, (oh_n, ow_n))
    # weight (and bias) gradients by a per-image kernel, the input gradient by its own path
    implicit_w = (need_weight and blas_k.ready()
                  and plan.use_implicit_weight(cg, og, kh, kw, stride, cols.m))
    block = 0
    if need_weight and blas_k.ready() and not implicit_w:
        block = gemm.grad_weight_block(cols.flat, cols.m, ow_n)
    if implicit_w or block:
        if need_input:
            gx = input_only()
        if implicit_w:
            gw, gb = implicit.grad_weight(gy, x, w_shape, stride, padding, dilation, groups,
                                          need_bias)
        else:
            gw, gb = gemm.grad_weight(gy3, x, w_shape, stride, padding, dilation, groups, cols,
                                      block, need_bias)
        return gx, gw, gb
    gw, gb = gemm.backward(gy3, x, w, stride, padding, dilation, groups, need_input,
                           need_weight, need_bias, cols, gx)
    return gx, gw, gb


__all__ = ["KERNEL_MODULES", "conv2d_backward", "conv2d_forward", "output_size",
           "params_from_parts"]
