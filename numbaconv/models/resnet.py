"""Residual networks (He et al., 2016): the ImageNet ``resnet18``/``resnet34`` and the
CIFAR-style ``resnet_mini`` (depth 6n+2)."""

from __future__ import annotations

from .. import nn
from ..functional import relu


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU. When the shape changes the
    shortcut is a 1x1 projection with BatchNorm (the paper's option B). ``residual=False``
    drops the shortcut: the "plain" block of the paper's comparison."""

    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 residual: bool = True):
        super().__init__()
        self.residual = bool(residual)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        # torchvision's names (and so its state_dict keys): the projection is ``downsample``,
        # None where the shortcut is the identity
        self.downsample = None
        if self.residual and (stride != 1 or in_channels != out_channels):
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = self.bn1(self.conv1(x), _relu=True)  # BatchNorm and ReLU fused in one kernel
        if not self.residual:
            return self.bn2(self.conv2(out), _relu=True)
        out = self.bn2(self.conv2(out))
        return relu(out + (self.downsample(x) if self.downsample is not None else x))


class ResNetMini(nn.Module):
    """CIFAR ResNet: 3x3 stem with 16 channels, three stages of ``n`` basic blocks at 16, 32, 64
    channels (stride 2 between stages), global average pooling and a linear head.
    ``depth = 6n + 2``: 8, 14, 20, 32, ... ``residual=False`` builds the same network without
    shortcuts (the paper's "plain" baseline, whose training error grows with depth)."""

    def __init__(self, depth: int = 8, num_classes: int = 10, in_channels: int = 1,
                 widths=(16, 32, 64), residual: bool = True):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"ResNetMini: depth={depth} must be 6n + 2 (8, 14, 20, ...)")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, c = [], widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(c, w, 2 if (j == 0 and i > 0) else 1, residual))
                c = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.bn1(self.conv1(x), _relu=True)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


def resnet_mini(depth: int = 8, num_classes: int = 10, in_channels: int = 1,
                **kwargs) -> ResNetMini:
    """CIFAR-style ResNet of ``depth`` 6n+2; keyword options ``widths`` and ``residual``."""
    return ResNetMini(depth, num_classes, in_channels, **kwargs)


class ResNet(nn.Module):
    """ImageNet ResNet with basic blocks (the paper's Table 1): 7x7/2 convolution with 64
    channels, BatchNorm, ReLU, 3x3/2 max pool, four stages at 64, 128, 256, 512 channels
    (stride 2 at the start of every stage but the first; 1x1 projection shortcuts where the
    shape changes), global average pooling and a linear classifier."""

    def __init__(self, blocks=(2, 2, 2, 2), num_classes: int = 1000, in_channels: int = 3,
                 widths=(64, 128, 256, 512)):
        super().__init__()
        if len(blocks) != len(widths) or any(int(b) < 1 for b in blocks):
            raise ValueError(f"ResNet: blocks={blocks!r} needs one positive count per stage "
                             f"(widths={widths!r})")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c = widths[0]
        self.stages = len(widths)
        for i, (n, w) in enumerate(zip(blocks, widths)):
            stage = []
            for j in range(int(n)):
                stage.append(BasicBlock(c, w, 2 if (j == 0 and i > 0) else 1))
                c = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))  # torchvision's names
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.bn1(self.conv1(x), _relu=True))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.avgpool(x).flatten(1))


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2); 11.7 M parameters, 1.8 G multiply-adds."""
    return ResNet((2, 2, 2, 2), num_classes, in_channels)


def resnet34(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3); 21.8 M parameters, 3.6 G multiply-adds."""
    return ResNet((3, 4, 6, 3), num_classes, in_channels)
