"""Convolution and transposed convolution: argument checks, forward and backward side by side.

``conv2d`` is cross-correlation, as in every deep-learning API::

    y[n, o, i, j] = b[o] + sum_{c,a,b} w[o,c,a,b] * x[n, g*C_g + c, i*s + a*d - p, j*s + b*d - p]

    H_out = floor((H_in + 2*padding - dilation*(kernel_size - 1) - 1) / stride + 1)

``conv_transpose2d`` is its adjoint with respect to the input (the "upsampling" convolution)::

    H_out = (H_in - 1)*stride - 2*padding + dilation*(kernel_size - 1) + output_padding + 1
"""

from __future__ import annotations

from ..autograd import Function
from ..tensor import Tensor
from ._args import check_input4d, check_param, pair
from .layout import pad


class Conv2d(Function):
    def forward(self, x, w, b=None, *, stride, padding, dilation, groups):
        self.save(x, w)
        self.args = (stride, padding, dilation, groups)
        return self.backend.conv2d(x, w, b, stride, padding, dilation, groups)

    def backward(self, g):
        x, w = self.saved
        needs = tuple(self.needs_input_grad) + (False,) * (3 - len(self.needs_input_grad))
        gx, gw, gb = self.backend.conv2d_backward(g, x if needs[1] else None, w, *self.args,
                                                  needs, x_shape=x.shape)
        return (gx, gw, gb)[: len(self.needs_input_grad)]


class ConvTranspose2d(Function):
    def forward(self, x, w, b=None, *, stride, padding, dilation, groups, out_shape):
        be = self.backend
        self.save(x, w)
        self.args = (stride, padding, dilation, groups)
        # the transposed convolution is the input gradient of the convolution it transposes
        y = be.conv2d_backward(x, None, w, stride, padding, dilation, groups,
                               (True, False, False), x_shape=out_shape)[0]
        if b is not None:
            y = be.binary("add", y, be.reshape(b, (1, -1, 1, 1)))
        return y

    def backward(self, g):
        be = self.backend
        x, w = self.saved
        needs = self.needs_input_grad
        gx = None
        if needs[0]:
            gx = be.conv2d(g, w, None, *self.args)
            if gx.shape != x.shape:  # output_padding >= stride (allowed when dilation > stride)
                gx = be.ascontiguous(be.getitem(gx, (slice(None), slice(None),
                                                     slice(0, x.shape[2]), slice(0, x.shape[3]))))
        gw = None
        if needs[1]:  # the weight gradient of that convolution, with the roles of x and gy
            gw = be.conv2d_backward(x, g, None, *self.args, (False, True, False),
                                    w_shape=w.shape)[1]
        grads = [gx, gw]
        if len(needs) == 3:
            grads.append(be.reduce("sum", g, (0, 2, 3), False) if needs[2] else None)
        return tuple(grads)


def _check_conv(fn, input, weight, bias, stride, dilation, groups):
    x, unbatched = check_input4d(input, fn)
    check_param(weight, x, "weight", fn, 4)
    if bias is not None:
        check_param(bias, x, "bias", fn, 1)
    stride = pair(stride, "stride", fn, 1)
    dilation = pair(dilation, "dilation", fn, 1)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{fn}(): groups={groups!r} must be a positive int")
    return x, unbatched, stride, dilation


def conv2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> Tensor:
    """2-D convolution (cross-correlation) over an NCHW input, as ``torch.nn.functional.conv2d``.

    ``weight`` is ``(C_out, C_in/groups, kH, kW)``; ``padding`` is an int, a pair, ``'valid'`` or
    ``'same'`` (stride 1 only; an odd total padding puts the extra row/column at the end).

    >>> y = conv2d(numbaconv.randn(8, 3, 32, 32), numbaconv.randn(16, 3, 3, 3), padding=1)
    >>> y.shape
    (8, 16, 32, 32)
    """
    fn = "conv2d"
    x, unbatched, stride, dilation = _check_conv(fn, input, weight, bias, stride, dilation, groups)
    n_out, cg, kh, kw = weight.shape
    c_in = x.shape[1]
    if c_in % groups:
        raise ValueError(f"{fn}(): input channels {c_in} must be divisible by groups={groups}")
    if n_out % groups:
        raise ValueError(f"{fn}(): out channels {n_out} (weight.shape[0]) must be divisible by "
                         f"groups={groups}")
    if cg * groups != c_in:
        raise ValueError(f"{fn}(): weight of shape {weight.shape} expects {cg * groups} input "
                         f"channels (weight.shape[1] * groups), but input has {c_in}")
    if bias is not None and bias.shape[0] != n_out:
        raise ValueError(f"{fn}(): bias has {bias.shape[0]} elements, expected {n_out}")
    if kh < 1 or kw < 1:
        raise ValueError(f"{fn}(): weight has an empty kernel, shape {weight.shape}")
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{fn}(): padding='same' needs stride=1, got stride={stride}")
            total = (dilation[0] * (kh - 1), dilation[1] * (kw - 1))
            left = (total[0] // 2, total[1] // 2)
            extra = (total[0] - 2 * left[0], total[1] - 2 * left[1])
            if extra != (0, 0):  # asymmetric: the extra row/column goes at the end (PyTorch)
                x = pad(x, (0, extra[1], 0, extra[0]))
            padding = left
        else:
            raise ValueError(f"{fn}(): padding={padding!r}; expected an int, a pair, 'valid' or "
                             f"'same'")
    else:
        padding = pair(padding, "padding", fn, 0)
    h, w = x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1]
    eff = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    if eff[0] > h or eff[1] > w:
        raise ValueError(f"{fn}(): the (dilated) kernel {eff} is larger than the padded input "
                         f"({h}, {w})")
    args = (x, weight) if bias is None else (x, weight, bias)
    y = Conv2d.apply(*args, stride=stride, padding=padding, dilation=dilation, groups=groups)
    return y.squeeze(0) if unbatched else y


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1,
                     padding=0, output_padding=0, groups: int = 1, dilation=1) -> Tensor:
    """Transposed convolution, as ``torch.nn.functional.conv_transpose2d``.

    ``weight`` is ``(C_in, C_out/groups, kH, kW)``; the output is the gradient of ``conv2d`` with
    respect to its input, so it upsamples by ``stride``.
    """
    fn = "conv_transpose2d"
    x, unbatched, stride, dilation = _check_conv(fn, input, weight, bias, stride, dilation, groups)
    padding = pair(padding, "padding", fn, 0)
    output_padding = pair(output_padding, "output_padding", fn, 0)
    c_in, cg_out, kh, kw = weight.shape
    if x.shape[1] != c_in:
        raise ValueError(f"{fn}(): weight of shape {weight.shape} expects {c_in} input channels "
                         f"(weight.shape[0]), but input has {x.shape[1]}")
    if c_in % groups:
        raise ValueError(f"{fn}(): input channels {c_in} must be divisible by groups={groups}")
    for i in range(2):
        if output_padding[i] >= max(stride[i], dilation[i]):
            raise ValueError(f"{fn}(): output_padding={output_padding} must be smaller than "
                             f"stride={stride} or dilation={dilation}")
    n_out = cg_out * groups
    if bias is not None and bias.shape[0] != n_out:
        raise ValueError(f"{fn}(): bias has {bias.shape[0]} elements, expected {n_out}")
    out_hw = tuple((x.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                   + dilation[i] * ((kh, kw)[i] - 1) + output_padding[i] + 1 for i in range(2))
    if out_hw[0] < 1 or out_hw[1] < 1:
        raise ValueError(f"{fn}(): the output size {out_hw} is not positive; reduce padding="
                         f"{padding}")
    out_shape = (x.shape[0], n_out) + out_hw
    args = (x, weight) if bias is None else (x, weight, bias)
    y = ConvTranspose2d.apply(*args, stride=stride, padding=padding, dilation=dilation,
                              groups=groups, out_shape=out_shape)
    return y.squeeze(0) if unbatched else y
