"""LeNet-5 (LeCun et al., 1998), sized for 28x28 input as in most modern re-implementations."""

from __future__ import annotations

from .. import nn


class LeNet5(nn.Module):
    """conv 6@5x5 (padding 2) -> pool 2 -> conv 16@5x5 -> pool 2 -> fc 120 -> fc 84 -> fc N.

    The paper used tanh and average ("subsampling") pooling; ReLU and max pooling (the
    defaults) train faster and are what most references mean today.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, activation: str = "relu",
                 pool: str = "max"):
        super().__init__()
        if activation not in ("relu", "tanh"):
            raise ValueError(f"LeNet5: activation={activation!r}; expected 'relu' or 'tanh'")
        if pool not in ("max", "avg"):
            raise ValueError(f"LeNet5: pool={pool!r}; expected 'max' or 'avg'")
        act = nn.ReLU if activation == "relu" else nn.Tanh
        pool_layer = nn.MaxPool2d if pool == "max" else nn.AvgPool2d
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), act(), pool_layer(2),
            nn.Conv2d(6, 16, 5), act(), pool_layer(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), act(),
            nn.Linear(120, 84), act(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def lenet5(num_classes: int = 10, in_channels: int = 1, **kwargs) -> LeNet5:
    return LeNet5(num_classes, in_channels, **kwargs)
