"""Datasets and loaders: CIFAR-100, CIFAR-10, ImageNet folders, any image folder, digits, synthetic.

``build_data(DataConfig(...))`` returns a DataSpec, a train loader whose ``epoch(e, start_step)``
yields this rank's Batch of every global step, and an eval loader over this rank's test shard.
"""

from okd.data.augment import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD
from okd.data.batch import Batch
from okd.data.build import DATASETS, build_data
from okd.data.config import DataConfig, DataSpec
from okd.data.digits import DIGITS_MEAN, DIGITS_STD
from okd.data.loaders import EvalLoader, TrainLoader

__all__ = [
    "Batch",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATASETS",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "DataConfig",
    "DataSpec",
    "EvalLoader",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TrainLoader",
    "build_data",
]
