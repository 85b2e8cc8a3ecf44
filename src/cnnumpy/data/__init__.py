"""Data sets in their official formats, transforms and batching. Knows no model.

    from cnnumpy.data import load_dataset, channel_stats, normalize, iterate_batches
    train = load_dataset("fashion-mnist", "train")           # images (60000, 1, 28, 28) uint8
    mean, std = channel_stats(train.images)                  # float32 (1,), (1,)
    for idx in iterate_batches(train, 128, rng):
        x = normalize(random_crop(train.images[idx], 2, rng), mean, std)   # float32 NCHW
        y = train.labels[idx]                                               # int64

Modules: `idx` (MNIST-family IDX files), `cifar` (CIFAR-10 binary), `sources` (where files
come from, downloads), `dataset` (ImageDataset, load_dataset), `transforms`, `loader`.
"""

from .cifar import CIFAR10_CLASSES
from .dataset import (CLASS_NAMES, FASHION_MNIST_CLASSES, MNIST_CLASSES, ImageDataset,
                      load_dataset)
from .loader import iterate_batches, num_batches, train_val_split
from .sources import DATASETS, DatasetNotFoundError, data_home, dataset_files
from .transforms import channel_stats, normalize, random_crop, random_erasing, random_hflip

__all__ = [
    "CIFAR10_CLASSES", "CLASS_NAMES", "DATASETS", "DatasetNotFoundError",
    "FASHION_MNIST_CLASSES", "ImageDataset", "MNIST_CLASSES", "channel_stats", "data_home",
    "dataset_files", "iterate_batches", "load_dataset", "normalize", "num_batches",
    "random_crop", "random_erasing", "random_hflip", "train_val_split",
]
