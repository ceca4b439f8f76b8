"""GoogLeNet (Szegedy et al., 2015, "Going deeper with convolutions"), Table 1 of the paper."""

from __future__ import annotations

from collections import namedtuple

from .. import functional as F
from .. import nn

GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", ["logits", "aux1", "aux2"])
GoogLeNetOutputs.__doc__ = """Training-mode output of ``GoogLeNet(aux_logits=True)``: the main
logits and the two auxiliary classifiers' logits (after inception 4a and 4d)."""


def _conv(c_in, c_out, k, stride=1, padding=0):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, padding), nn.ReLU())


class Inception(nn.Module):
    """Four parallel branches concatenated along channels: 1x1; 1x1 then 3x3; 1x1 then 5x5;
    3x3 max pool (stride 1) then a 1x1 projection. Every convolution is followed by ReLU.

    The arguments are the columns of the paper's Table 1: ``#1x1, #3x3 reduce, #3x3,
    #5x5 reduce, #5x5, pool proj``; the output has ``ch1x1 + ch3x3 + ch5x5 + pool_proj``
    channels.
    """

    def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__()
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj
        self.branch1 = _conv(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(_conv(in_channels, ch3x3red, 1),
                                     _conv(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(_conv(in_channels, ch5x5red, 1),
                                     _conv(ch5x5red, ch5x5, 5, padding=2))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, padding=1, ceil_mode=True),
                                     _conv(in_channels, pool_proj, 1))

    def forward(self, x):
        return F.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """The auxiliary classifier: 5x5 average pool with stride 3, 1x1 convolution to 128
    channels, FC-1024, dropout 0.7, linear classifier."""

    def __init__(self, in_channels, num_classes, dropout=0.7):
        super().__init__()
        self.pool = nn.AvgPool2d(5, 3)  # 14x14 -> 4x4
        self.conv = _conv(in_channels, 128, 1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = self.conv(self.pool(x)).flatten(1)
        return self.fc2(self.dropout(self.relu(self.fc1(x))))


# (in, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj), from Table 1
_TABLE = {
    "3a": (192, 64, 96, 128, 16, 32, 32), "3b": (256, 128, 128, 192, 32, 96, 64),
    "4a": (480, 192, 96, 208, 16, 48, 64), "4b": (512, 160, 112, 224, 24, 64, 64),
    "4c": (512, 128, 128, 256, 24, 64, 64), "4d": (512, 112, 144, 288, 32, 64, 64),
    "4e": (528, 256, 160, 320, 32, 128, 128), "5a": (832, 256, 160, 320, 32, 128, 128),
    "5b": (832, 384, 192, 384, 48, 128, 128),
}


class GoogLeNet(nn.Module):
    """GoogLeNet as in the paper's Table 1 (22 layers with parameters, no BatchNorm), with the
    paper's LRN after the first pooling and after the 3x3 convolution of the stem.

    With ``aux_logits=True`` the two auxiliary classifiers exist and, in training mode, the
    forward pass returns ``GoogLeNetOutputs(logits, aux1, aux2)``; :meth:`loss` (or
    :func:`googlenet_loss`) adds their cross-entropies weighted by 0.3, as the paper did. In
    eval mode the auxiliary heads are skipped and the forward pass returns the logits only.
    Max pools use ``ceil_mode=True`` so that 224 -> 112 -> 56 -> 28 -> 14 -> 7.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = True,
                 dropout: float = 0.4, aux_dropout: float = 0.7, lrn: bool = True):
        super().__init__()
        self.aux_logits = bool(aux_logits)

        def norm():
            return [nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)] if lrn else []

        self.stem = nn.Sequential(
            _conv(in_channels, 64, 7, stride=2, padding=3),
            nn.MaxPool2d(3, 2, ceil_mode=True), *norm(),
            _conv(64, 64, 1), _conv(64, 192, 3, padding=1), *norm(),
            nn.MaxPool2d(3, 2, ceil_mode=True),
        )
        for name, spec in _TABLE.items():
            setattr(self, "inception" + name, Inception(*spec))
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.maxpool4 = nn.MaxPool2d(3, 2, ceil_mode=True)
        if self.aux_logits:
            self.aux1 = InceptionAux(512, num_classes, aux_dropout)
            self.aux2 = InceptionAux(528, num_classes, aux_dropout)
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # the paper's 7x7 average pool at 224x224
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.inception3b(self.inception3a(x))
        x = self.inception4a(self.maxpool3(x))
        aux = self.aux_logits and self.training
        aux1 = self.aux1(x) if aux else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if aux else None
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        logits = self.fc(self.dropout(self.avgpool(x).flatten(1)))
        return GoogLeNetOutputs(logits, aux1, aux2) if aux else logits

    @staticmethod
    def loss(outputs, target, aux_weight: float = 0.3, **kwargs):
        return googlenet_loss(outputs, target, aux_weight, **kwargs)


def googlenet_loss(outputs, target, aux_weight: float = 0.3, **kwargs):
    """Cross-entropy of the main logits plus ``aux_weight`` times each auxiliary head's (when
    ``outputs`` is a ``GoogLeNetOutputs``); plain cross-entropy for plain logits. Extra keyword
    arguments (``label_smoothing``, ...) go to ``cross_entropy``."""
    if isinstance(outputs, GoogLeNetOutputs):
        loss = F.cross_entropy(outputs.logits, target, **kwargs)
        for aux in (outputs.aux1, outputs.aux2):
            if aux is not None:
                loss = loss + aux_weight * F.cross_entropy(aux, target, **kwargs)
        return loss
    return F.cross_entropy(outputs, target, **kwargs)


class BasicConv2d(nn.Module):
    """torchvision GoogLeNet's unit: convolution without bias, BatchNorm (eps 0.001), ReLU."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                              bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return self.bn(self.conv(x), _relu=True)


class TorchvisionInception(nn.Module):
    """torchvision's Inception block: BasicConv2d units, and a 3x3 convolution where the
    paper's third branch has 5x5 (kept by torchvision for its published weights)."""

    def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(in_channels, ch3x3red, 1),
                                     BasicConv2d(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(in_channels, ch5x5red, 1),
                                     BasicConv2d(ch5x5red, ch5x5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, padding=1, ceil_mode=True),
                                     BasicConv2d(in_channels, pool_proj, 1))

    def forward(self, x):
        return F.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class TorchvisionInceptionAux(nn.Module):
    """torchvision's auxiliary head: adaptive 4x4 average pool, BasicConv2d to 128 channels,
    FC-1024 with ReLU, dropout, the classifier."""

    def __init__(self, in_channels, num_classes, dropout=0.7):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d((4, 4))
        self.conv = BasicConv2d(in_channels, 128, 1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        x = self.conv(self.pool(x)).flatten(1)
        return self.fc2(self.dropout(self.fc1(x).relu()))


# torchvision's input transform (transform_input=True, as with its ImageNet weights): from
# images normalised with ImageNet's mean and std to the (x - 0.5) / 0.5 its weights expect
_TV_SCALE = (0.229 / 0.5, 0.224 / 0.5, 0.225 / 0.5)
_TV_SHIFT = ((0.485 - 0.5) / 0.5, (0.456 - 0.5) / 0.5, (0.406 - 0.5) / 0.5)


class TorchvisionGoogLeNet(nn.Module):
    """torchvision's GoogLeNet: BatchNorm after every convolution instead of LRN, its own
    third-branch kernels (see TorchvisionInception), a 2x2 fourth pool, dropout 0.2, adaptive
    auxiliary heads; ``state_dict`` keys and shapes are torchvision's, so its weights load as
    they are. ``transform_input=True`` applies torchvision's input transform (use it with
    torchvision's ImageNet weights, as torchvision does). Outputs as :class:`GoogLeNet`'s."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = True,
                 transform_input: bool = False, dropout: float = 0.2,
                 aux_dropout: float = 0.7):
        super().__init__()
        if transform_input and in_channels != 3:
            raise ValueError(f"googlenet(): transform_input=True is for 3-channel ImageNet "
                             f"images, got in_channels={in_channels}")
        self.aux_logits, self.transform_input = bool(aux_logits), bool(transform_input)
        self.conv1 = BasicConv2d(in_channels, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, 1)
        self.conv3 = BasicConv2d(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        for name, spec in _TABLE.items():
            setattr(self, "inception" + name, TorchvisionInception(*spec))
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.maxpool4 = nn.MaxPool2d(2, 2, ceil_mode=True)
        if self.aux_logits:
            self.aux1 = TorchvisionInceptionAux(512, num_classes, aux_dropout)
            self.aux2 = TorchvisionInceptionAux(528, num_classes, aux_dropout)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        if self.transform_input:  # per-channel x * scale + shift, as torchvision's
            from ..tensor import tensor

            shape = (1, 3, 1, 1)
            x = x * tensor(_TV_SCALE, device=x.device).reshape(shape).to(dtype=x.dtype) \
                + tensor(_TV_SHIFT, device=x.device).reshape(shape).to(dtype=x.dtype)
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.inception3b(self.inception3a(x))
        x = self.inception4a(self.maxpool3(x))
        aux = self.aux_logits and self.training
        aux1 = self.aux1(x) if aux else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if aux else None
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        logits = self.fc(self.dropout(self.avgpool(x).flatten(1)))
        return GoogLeNetOutputs(logits, aux1, aux2) if aux else logits

    @staticmethod
    def loss(outputs, target, aux_weight: float = 0.3, **kwargs):
        return googlenet_loss(outputs, target, aux_weight, **kwargs)


def googlenet(num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = True,
              variant: str = "paper", **kwargs) -> GoogLeNet | TorchvisionGoogLeNet:
    """GoogLeNet. ``variant="paper"`` (the default) is Table 1 of the paper (LRN, 5x5
    branches; options ``dropout``, ``aux_dropout``, ``lrn``); ``variant="torchvision"`` is
    torchvision's (BatchNorm; its weights load into it; options ``transform_input``,
    ``dropout``, ``aux_dropout``)."""
    if variant == "paper":
        return GoogLeNet(num_classes, in_channels, aux_logits, **kwargs)
    if variant == "torchvision":
        return TorchvisionGoogLeNet(num_classes, in_channels, aux_logits, **kwargs)
    raise ValueError(f"googlenet(): variant={variant!r}; expected 'paper' or 'torchvision'")
