"""The layers: state and initialisation here, the math in ``numbaconv.functional``.

Signatures, defaults, parameter shapes and default initialisation follow ``torch.nn``.
"""

from __future__ import annotations

import math
import numbers

from .. import functional as F
from ..functional._args import pair
from ..tensor import Tensor, empty, ones, zeros
from . import init
from .module import Module, Parameter


def _positive_int(value, name, layer):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{layer}(): {name}={value!r} must be a positive int")
    return int(value)


class _ConvNd(Module):
    transposed = False

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                 groups, bias, output_padding=0, padding_mode="zeros", dtype=None, device=None):
        super().__init__()
        name = type(self).__name__
        self.in_channels = _positive_int(in_channels, "in_channels", name)
        self.out_channels = _positive_int(out_channels, "out_channels", name)
        self.groups = _positive_int(groups, "groups", name)
        if in_channels % groups:
            raise ValueError(f"{name}(): in_channels={in_channels} must be divisible by "
                             f"groups={groups}")
        if out_channels % groups:
            raise ValueError(f"{name}(): out_channels={out_channels} must be divisible by "
                             f"groups={groups}")
        self.kernel_size = pair(kernel_size, "kernel_size", name, 1)
        self.stride = pair(stride, "stride", name, 1)
        self.dilation = pair(dilation, "dilation", name, 1)
        if isinstance(padding, str):
            if padding not in ("same", "valid") or self.transposed:
                raise ValueError(f"{name}(): padding={padding!r}; expected an int, a pair"
                                 + ("" if self.transposed else ", 'same' or 'valid'"))
            if padding == "same" and self.stride != (1, 1):
                raise ValueError(f"{name}(): padding='same' needs stride=1")
            self.padding = padding
        else:
            self.padding = pair(padding, "padding", name, 0)
        self.output_padding = pair(output_padding, "output_padding", name, 0)
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"{name}(): padding_mode={padding_mode!r}; expected 'zeros', "
                             f"'reflect', 'replicate' or 'circular'")
        if padding_mode != "zeros" and self.transposed:
            raise ValueError(f"{name}(): only padding_mode='zeros' is supported")
        self.padding_mode = padding_mode
        if self.transposed:
            shape = (in_channels, out_channels // groups) + self.kernel_size
        else:
            shape = (out_channels, in_channels // groups) + self.kernel_size
        self.weight = Parameter(empty(shape, dtype=dtype, device=device))
        if bias:
            self.bias = Parameter(empty(out_channels, dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # PyTorch's default: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s


class Conv2d(_ConvNd):
    """2-D convolution over NCHW input; ``weight`` is (out, in/groups, kH, kW).

    ``H_out = floor((H_in + 2*padding - dilation*(kernel_size-1) - 1)/stride + 1)``

    >>> Conv2d(3, 16, 3, padding=1)(numbaconv.randn(8, 3, 32, 32)).shape
    (8, 16, 32, 32)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, padding_mode="zeros", device=None,
                 dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode=padding_mode, dtype=dtype, device=device)

    def forward(self, input: Tensor) -> Tensor:
        if self.padding_mode != "zeros" and not isinstance(self.padding, str):
            ph, pw = self.padding
            input = F.pad(input, (pw, pw, ph, ph), mode=self.padding_mode)
            return F.conv2d(input, self.weight, self.bias, self.stride, 0, self.dilation,
                            self.groups)
        return F.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


class ConvTranspose2d(_ConvNd):
    """Transposed ("up-sampling") 2-D convolution; ``weight`` is (in, out/groups, kH, kW).

    ``H_out = (H_in-1)*stride - 2*padding + dilation*(kernel_size-1) + output_padding + 1``
    """

    transposed = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, groups=1, bias=True, dilation=1, padding_mode="zeros",
                 device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, output_padding, padding_mode, dtype, device)

    def forward(self, input: Tensor) -> Tensor:
        return F.conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)


class Linear(Module):
    """``y = x @ W^T + b``; ``weight`` is (out_features, in_features)."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features", "Linear")
        self.out_features = _positive_int(out_features, "out_features", "Linear")
        self.weight = Parameter(empty(out_features, in_features, dtype=dtype, device=device))
        if bias:
            self.bias = Parameter(empty(out_features, dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            init.uniform_(self.bias, -bound, bound)

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size", "MaxPool2d", 1)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride",
                                                                  "MaxPool2d", 1)
        self.padding = pair(padding, "padding", "MaxPool2d", 0)
        self.dilation = pair(dilation, "dilation", "MaxPool2d", 1)
        for i in range(2):
            if self.padding[i] > self.kernel_size[i] // 2:
                raise ValueError(f"MaxPool2d(): padding={padding} must be at most half of "
                                 f"kernel_size={kernel_size}")
        self.return_indices, self.ceil_mode = bool(return_indices), bool(ceil_mode)

    def forward(self, input):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            self.ceil_mode, self.return_indices)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size", "AvgPool2d", 1)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride",
                                                                  "AvgPool2d", 1)
        self.padding = pair(padding, "padding", "AvgPool2d", 0)
        self.ceil_mode, self.count_include_pad = bool(ceil_mode), bool(count_include_pad)
        self.divisor_override = divisor_override

    def forward(self, input):
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, input):
        return F.adaptive_avg_pool2d(input, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveMaxPool2d(AdaptiveAvgPool2d):
    def forward(self, input):
        return F.adaptive_max_pool2d(input, self.output_size)


class LocalResponseNorm(Module):
    """Across-channel LRN, PyTorch's definition (alpha scales the *mean* of squares)."""

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        self.size = _positive_int(size, "size", "LocalResponseNorm")
        self.alpha, self.beta, self.k = float(alpha), float(beta), float(k)

    def forward(self, input):
        return F.local_response_norm(input, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self):
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class _BatchNorm(Module):
    expected_dims: tuple = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True):
        super().__init__()
        name = type(self).__name__
        self.num_features = _positive_int(num_features, "num_features", name)
        if momentum is not None and not 0 <= momentum <= 1:
            raise ValueError(f"{name}(): momentum={momentum!r} must be in [0, 1] or None")
        self.eps, self.momentum = float(eps), momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        if affine:  # bias=False: a learned scale only (PyTorch 2.13)
            self.weight = Parameter(ones(num_features, dtype=dtype, device=device))
            if bias:
                self.bias = Parameter(zeros(num_features, dtype=dtype, device=device))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", zeros(num_features, dtype=dtype, device=device))
            self.register_buffer("running_var", ones(num_features, dtype=dtype, device=device))
            from ..tensor import int64, tensor

            self.register_buffer("num_batches_tracked", tensor(0, dtype=int64, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def _check_input(self, input: Tensor) -> None:
        name = type(self).__name__
        if input.ndim not in self.expected_dims:
            dims = " or ".join(f"{d}-D" for d in self.expected_dims)
            raise ValueError(f"{name}: expected {dims} input, got shape {input.shape}")
        if input.shape[1] != self.num_features:
            raise ValueError(f"{name}: input has {input.shape[1]} channels, expected "
                             f"num_features={self.num_features}")

    def _momentum(self) -> float:
        """This step's momentum, counting the batch in training."""
        momentum = self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative moving average
                momentum = 1.0 / int(self.num_batches_tracked.item())
        return momentum or 0.0

    def forward(self, input: Tensor, _relu: bool = False) -> Tensor:
        self._check_input(input)
        momentum = self._momentum()
        # batch statistics in training, or whenever there are no running ones (PyTorch's rule)
        use_batch = self.training or not self.track_running_stats
        return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                            use_batch, momentum, self.eps, _relu=_relu)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) input, per channel (running stats, momentum 0.1)."""

    expected_dims = (4,)


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) input, per channel."""

    expected_dims = (2, 3)


class SyncBatchNorm(_BatchNorm):
    """Batch normalisation whose training statistics span the batches of every rank of a
    data-parallel job (see ``numbaconv.distributed``), as PyTorch's: with a batch of B per
    rank on P ranks it normalises as BatchNorm would over one batch of P * B. In eval mode, or
    in a world of one, it is plain BatchNorm. Any input of 2 or more dims, (N, C, ...)."""

    expected_dims = (2, 3, 4, 5)

    def forward(self, input: Tensor, _relu: bool = False) -> Tensor:
        from .. import distributed as dist

        if not (self.training and dist._active()):
            return super().forward(input, _relu=_relu)
        self._check_input(input)
        momentum = self._momentum()
        out = F.sync_batch_norm(input, self.running_mean, self.running_var, self.weight,
                                self.bias, momentum, self.eps)
        return out.relu() if _relu else out

    @classmethod
    def convert_sync_batchnorm(cls, module: Module, process_group=None) -> Module:
        """``module`` with every BatchNorm1d/2d (itself or inside it) replaced by a
        SyncBatchNorm holding the same parameters and buffers (the same tensors, so an
        optimizer made before still updates them)."""
        if process_group is not None:
            raise ValueError("convert_sync_batchnorm(): process groups other than the world "
                             "are not supported; pass process_group=None")
        if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
            new = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats)
            for name, p in module._parameters.items():
                new._parameters[name] = p
            for name, b in module._buffers.items():
                new._buffers[name] = b
            new.train(module.training)
            return new
        for name, child in list(module._modules.items()):
            if child is not None:
                module._modules[name] = cls.convert_sync_batchnorm(child)
        return module


class Dropout(Module):
    """Zero elements with probability p and scale the rest by 1/(1-p) in training; identity
    in eval."""

    def __init__(self, p=0.5):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
            raise ValueError(f"Dropout(): p={p!r} must be a probability in [0, 1]")
        self.p = float(p)

    def forward(self, input):
        return F.dropout(input, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class ReLU(Module):
    def __init__(self, inplace: bool = False):  # inplace accepted for PyTorch compatibility
        super().__init__()

    def forward(self, input):
        return F.relu(input)


class Tanh(Module):
    def forward(self, input):
        return F.tanh(input)


class Sigmoid(Module):
    def forward(self, input):
        return F.sigmoid(input)


class Softmax(Module):
    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, input):
        return F.softmax(input, self.dim)


class LogSoftmax(Softmax):
    def forward(self, input):
        return F.log_softmax(input, self.dim)


class Flatten(Module):
    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, input):
        return F.flatten(input, self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Identity(Module):
    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, input):
        return input


class Upsample(Module):
    def __init__(self, size=None, scale_factor=None, mode="nearest"):
        super().__init__()
        self.size, self.scale_factor, self.mode = size, scale_factor, mode

    def forward(self, input):
        return F.interpolate(input, self.size, self.scale_factor, self.mode)


# ------------------------------------------------------------------ losses
class _Loss(Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction


class CrossEntropyLoss(_Loss):
    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__(reduction)
        self.register_buffer("weight", weight)  # in state_dict() and moved by .to(), as PyTorch
        self.ignore_index, self.label_smoothing = ignore_index, label_smoothing

    def forward(self, input, target):
        return F.cross_entropy(input, target, self.weight, self.ignore_index, self.reduction,
                               self.label_smoothing)


class NLLLoss(_Loss):
    def __init__(self, weight=None, ignore_index=-100, reduction="mean"):
        super().__init__(reduction)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index

    def forward(self, input, target):
        return F.nll_loss(input, target, self.weight, self.ignore_index, self.reduction)


class MSELoss(_Loss):
    def forward(self, input, target):
        return F.mse_loss(input, target, self.reduction)
