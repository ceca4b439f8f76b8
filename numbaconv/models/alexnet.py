"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012), as the paper describes it."""

from __future__ import annotations

from .. import nn


class AlexNet(nn.Module):
    """Five convolutions and three fully connected layers, ReLU everywhere.

    Paper details kept: 96@11x11 stride 4, 256@5x5, 384@3x3, 384@3x3, 256@3x3; local response
    normalisation (``size=5, k=2, alpha=1e-4, beta=0.75`` in the paper's form) after the first two
    convolutions' ReLU; overlapping max pooling (3x3, stride 2) after conv1, conv2 and conv5;
    dropout 0.5 before the first two fully connected layers (4096, 4096).

    ``groups=2`` (the default) is the paper's two-GPU layout: conv2, conv4 and conv5 see only
    the half of the previous layer's channels that lived on their GPU (60.97 M parameters at
    224x224, the paper's "60 million"). ``groups=1`` connects every channel (62.38 M).
    ``lrn=False`` drops the normalisation. The first convolution is padded by 2 so that a
    224x224 input gives the paper's 55x55 maps (the paper's 224 only works out for 227).
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, groups: int = 2,
                 lrn: bool = True, dropout: float = 0.5):
        super().__init__()
        if groups not in (1, 2):
            raise ValueError(f"AlexNet: groups={groups!r}; expected 1 (one tower) or 2 (the "
                             f"paper's two-GPU grouping)")
        # PyTorch's LRN divides alpha by size: alpha=size*1e-4 is the paper's alpha=1e-4
        def norm():
            return [nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)] if lrn else []

        self.groups = groups
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, 11, stride=4, padding=2), nn.ReLU(), *norm(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(96, 256, 5, padding=2, groups=groups), nn.ReLU(), *norm(),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 384, 3, padding=1, groups=groups), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1, groups=groups), nn.ReLU(),
            nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))  # the identity at 224x224
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


class TorchvisionAlexNet(nn.Module):
    """torchvision's AlexNet (after Krizhevsky's "one weird trick" paper, 2014): 64, 192, 384,
    256 and 256 filters, one tower, no LRN, an adaptive 6x6 average pool; its ``state_dict``
    keys and shapes are torchvision's, so its ImageNet weights load as they are."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def alexnet(num_classes: int = 1000, in_channels: int = 3, variant: str = "paper",
            **kwargs) -> AlexNet | TorchvisionAlexNet:
    """AlexNet. ``variant="paper"`` (the default) is the 2012 paper's network, with keyword
    options ``groups`` (2 = paper, 1 = one tower), ``lrn``, ``dropout``;
    ``variant="torchvision"`` is torchvision's (its weights load into it; option
    ``dropout``)."""
    if variant == "paper":
        return AlexNet(num_classes, in_channels, **kwargs)
    if variant == "torchvision":
        return TorchvisionAlexNet(num_classes, in_channels, **kwargs)
    raise ValueError(f"alexnet(): variant={variant!r}; expected 'paper' or 'torchvision'")
