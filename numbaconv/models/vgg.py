"""VGG (Simonyan and Zisserman, 2015): the configurations A to E of the paper's Table 1."""

from __future__ import annotations

from .. import nn

# numbers are 3x3 convolutions (output channels), "c1-N" a 1x1 convolution, "M" a 2x2 max pool,
# "LRN" the local response normalisation of configuration A-LRN
CONFIGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, "c1-256", "M", 512, 512, "c1-512", "M",
          512, 512, "c1-512", "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}
DEPTHS = {"A": 11, "A-LRN": 11, "B": 13, "C": 16, "D": 16, "E": 19}


class VGG(nn.Module):
    """Stacks of 3x3 convolutions (padding 1) and 2x2 max pools, then FC-4096, FC-4096 and the
    classifier, with dropout 0.5 before the first two. ``batch_norm=True`` puts a BatchNorm
    after every convolution (the later, easier-to-train variant). An adaptive average pool to
    7x7 before the classifier is the identity at 224x224 and lets other sizes through.
    ``hidden`` is the width of the two hidden FC layers (the paper's 4096, whose 120 million
    weights are most of the net's; a narrower one suits small images and quick experiments)."""

    def __init__(self, config: str = "D", num_classes: int = 1000, in_channels: int = 3,
                 batch_norm: bool = False, dropout: float = 0.5, hidden: int = 4096):
        super().__init__()
        if config not in CONFIGS:
            raise ValueError(f"VGG: config={config!r}; expected one of {sorted(CONFIGS)}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"VGG: hidden={hidden!r}; expected a positive int")
        self.config = config
        layers, c = [], in_channels
        for item in CONFIGS[config]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            elif item == "LRN":  # the paper's LRN is AlexNet's (Krizhevsky et al.)
                layers.append(nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0))
            else:
                k, out = (1, int(item[3:])) if isinstance(item, str) else (3, item)
                layers.append(nn.Conv2d(c, out, k, padding=k // 2))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out))
                layers.append(nn.ReLU())
                c = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(c * 7 * 7, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def vgg(config: str = "D", num_classes: int = 1000, in_channels: int = 3,
        batch_norm: bool = False, **kwargs) -> VGG:
    """VGG with configuration ``"A"``, ``"A-LRN"``, ``"B"``, ``"C"``, ``"D"`` or ``"E"``."""
    return VGG(config, num_classes, in_channels, batch_norm, **kwargs)


def vgg11(num_classes=1000, in_channels=3, batch_norm=False, **kwargs) -> VGG:
    return VGG("A", num_classes, in_channels, batch_norm, **kwargs)


def vgg13(num_classes=1000, in_channels=3, batch_norm=False, **kwargs) -> VGG:
    return VGG("B", num_classes, in_channels, batch_norm, **kwargs)


def vgg16(num_classes=1000, in_channels=3, batch_norm=False, **kwargs) -> VGG:
    """Configuration D (all 3x3); ``vgg("C")`` is the 16-layer net with 1x1 convolutions."""
    return VGG("D", num_classes, in_channels, batch_norm, **kwargs)


def vgg19(num_classes=1000, in_channels=3, batch_norm=False, **kwargs) -> VGG:
    return VGG("E", num_classes, in_channels, batch_norm, **kwargs)


def vgg11_bn(num_classes=1000, in_channels=3, **kwargs) -> VGG:
    return VGG("A", num_classes, in_channels, True, **kwargs)


def vgg13_bn(num_classes=1000, in_channels=3, **kwargs) -> VGG:
    return VGG("B", num_classes, in_channels, True, **kwargs)


def vgg16_bn(num_classes=1000, in_channels=3, **kwargs) -> VGG:
    return VGG("D", num_classes, in_channels, True, **kwargs)


def vgg19_bn(num_classes=1000, in_channels=3, **kwargs) -> VGG:
    return VGG("E", num_classes, in_channels, True, **kwargs)
