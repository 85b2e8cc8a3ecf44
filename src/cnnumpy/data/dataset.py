"""ImageDataset, the class names of each data set, and `load_dataset` over the readers."""

from dataclasses import dataclass

import numpy as np

from . import cifar, idx, sources
from .sources import TITLES

MNIST_CLASSES = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CLASS_NAMES = {"fashion-mnist": FASHION_MNIST_CLASSES, "mnist": MNIST_CLASSES,
               "cifar10": cifar.CIFAR10_CLASSES}
# (C, H, W) of every image of each data set: files of another size are not that data set.
IMAGE_SHAPES = {"fashion-mnist": (1, 28, 28), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images with their labels and class names.

    images: (N, C, H, W) uint8, NCHW (C = 1 for MNIST-like sets, 3 for CIFAR-10).
    labels: (N,) int64, each in [0, len(class_names)).
    class_names: one name per class.  name: the data set's name ("fashion-mnist", ...).
    Validated on construction (ValueError / TypeError naming expected and received values).
    """
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple
    name: str

    def __post_init__(self):
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise TypeError(f"images must be a uint8 array of shape (N, C, H, W), got "
                            f"{getattr(images, 'dtype', type(images))} of shape "
                            f"{getattr(images, 'shape', None)}")
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.ndim != 1:
            raise TypeError(f"labels must be an int64 array of shape (N,), got "
                            f"{getattr(labels, 'dtype', type(labels))} of shape "
                            f"{getattr(labels, 'shape', None)}")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if not isinstance(self.class_names, (list, tuple)) or not self.class_names or not all(
                isinstance(c, str) and c for c in self.class_names):
            raise TypeError(f"class_names must be a non-empty list of non-empty strings, got "
                            f"{self.class_names!r:.80}")
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a string, got {type(self.name).__name__}")
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ValueError(f"labels must be in [0, {len(self.class_names)}) for "
                             f"{len(self.class_names)} class names, got range "
                             f"[{labels.min()}, {labels.max()}]")

    def __len__(self):
        return len(self.labels)

    def __repr__(self):
        return (f"ImageDataset(name={self.name!r}, images={self.images.shape}, "
                f"classes={len(self.class_names)})")

    @property
    def sample_shape(self):
        """(C, H, W) of one image: the `input_shape` of a model for this data."""
        return self.images.shape[1:]

    @property
    def num_classes(self):
        return len(self.class_names)

    def subset(self, indices):
        """A new ImageDataset of the items at `indices` (an index array or a slice)."""
        return ImageDataset(self.images[indices], self.labels[indices], self.class_names,
                            self.name)


def load_dataset(name, split="train", data_dir=None, download=True):
    """Load a split ("train" or "test") of one of DATASETS as an ImageDataset.

    Sizes: Fashion-MNIST and MNIST 60000 / 10000 images of (1, 28, 28); CIFAR-10
    50000 / 10000 of (3, 32, 32). Where the files come from: `cnnumpy.data.sources`.
    Raises DatasetNotFoundError when they are missing, ValueError when they are corrupt.
    """
    files = sources.dataset_files(name, split, data_dir=data_dir, download=download)
    if name == "cifar10":
        images, labels, class_names = cifar.read_cifar10(files["source"], split)
        source = files["source"]
    else:
        class_names = CLASS_NAMES[name]
        images = idx.read_idx_images(files["images"])
        labels = idx.read_idx_labels(files["labels"], num_classes=len(class_names))
        source = files["images"]
        if len(images) != len(labels):
            raise ValueError(f"{files['images']} has {len(images)} images but "
                             f"{files['labels']} has {len(labels)} labels")
    if images.shape[1:] != IMAGE_SHAPES[name]:
        raise ValueError(f"{source}: {TITLES[name]} images are {_shape_text(IMAGE_SHAPES[name])}"
                         f", the file holds {_shape_text(images.shape[1:])}")
    if len(images) == 0:
        raise ValueError(f"{source}: holds no images")
    return ImageDataset(images, labels, class_names, name)


def _shape_text(shape):
    channels, height, width = shape
    return f"{height}x{width} with {channels} channel{'s' if channels > 1 else ''}"
