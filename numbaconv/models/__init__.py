"""The model zoo: LeNet-5, AlexNet, VGG, GoogLeNet and ResNets, as their papers define them;
AlexNet and GoogLeNet also as torchvision defines them (``variant="torchvision"``), and every
model whose architecture torchvision has with torchvision's ``state_dict`` keys.

Every constructor takes ``num_classes`` and ``in_channels``. ``numbaconv.summary(model,
(3, 224, 224))`` reproduces the papers' parameter and multiply-add counts.
"""

from .alexnet import AlexNet, TorchvisionAlexNet, alexnet
from .googlenet import (
    GoogLeNet,
    GoogLeNetOutputs,
    Inception,
    InceptionAux,
    TorchvisionGoogLeNet,
    googlenet,
    googlenet_loss,
)
from .lenet import LeNet5, lenet5
from .resnet import BasicBlock, ResNet, ResNetMini, resnet18, resnet34, resnet_mini
from .vgg import VGG, vgg, vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn

__all__ = [
    "LeNet5", "lenet5", "AlexNet", "TorchvisionAlexNet", "alexnet", "VGG", "vgg", "vgg11",
    "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "GoogLeNet", "TorchvisionGoogLeNet", "GoogLeNetOutputs", "Inception", "InceptionAux",
    "googlenet", "googlenet_loss",
    "BasicBlock", "ResNet", "ResNetMini", "resnet18", "resnet34", "resnet_mini",
]
