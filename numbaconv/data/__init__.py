"""Datasets (MNIST-format IDX files), batch transforms and the DataLoader."""

from . import transforms
from .datasets import MNIST, FashionMNIST, Subset, TensorDataset, default_cache_dir
from .idx import read_idx, write_idx
from .loader import DataLoader, DistributedSampler

__all__ = ["MNIST", "FashionMNIST", "Subset", "TensorDataset", "DataLoader",
           "DistributedSampler", "read_idx", "write_idx", "transforms", "default_cache_dir"]
