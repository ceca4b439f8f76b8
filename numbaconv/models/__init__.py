"""The model zoo."""

from .lenet import LeNet5, lenet5
from .resnet import BasicBlock, ResNetMini, resnet_mini

__all__ = ["LeNet5", "lenet5", "BasicBlock", "ResNetMini", "resnet_mini"]
