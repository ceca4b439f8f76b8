"""Layers, losses and containers with ``torch.nn``'s names, signatures and defaults."""

from .. import functional
from . import init, parallel
from .layers import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    ConvTranspose2d,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    Identity,
    Linear,
    LocalResponseNorm,
    LogSoftmax,
    MaxPool2d,
    MSELoss,
    NLLLoss,
    ReLU,
    Sigmoid,
    Softmax,
    SyncBatchNorm,
    Tanh,
    Upsample,
)
from .module import Module, ModuleList, Parameter, Sequential

__all__ = [
    "functional", "init", "Module", "ModuleList", "Parameter", "Sequential",
    "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d",
    "Conv2d", "ConvTranspose2d", "CrossEntropyLoss", "Dropout", "Flatten", "Identity", "Linear",
    "LocalResponseNorm", "LogSoftmax", "MaxPool2d", "MSELoss", "NLLLoss", "ReLU", "Sigmoid",
    "Softmax", "SyncBatchNorm", "Tanh", "Upsample", "parallel",
]
