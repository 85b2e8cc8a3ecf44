"""Batches of indices for an epoch, and a seeded train/validation split.

`iterate_batches` yields index arrays, not data: the caller gathers
`dataset.images[idx]`, `dataset.labels[idx]` and then augments and normalises the batch,
so the same order serves training, evaluation and resuming in the middle of an epoch.
"""

import math

import numpy as np

from .dataset import ImageDataset


def _count(data):
    if isinstance(data, (int, np.integer)) and not isinstance(data, bool):
        count = int(data)
    elif hasattr(data, "__len__"):
        count = len(data)
    else:
        raise TypeError(f"expected a number of items or a sized data set, got {type(data)}")
    if count < 0:
        raise ValueError(f"the number of items must be >= 0, got {count}")
    return count


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def num_batches(data, batch_size, drop_last=False):
    """How many batches `iterate_batches` yields for `data` (a count or a sized data set)."""
    _check_batch_size(batch_size)
    count = _count(data)
    return count // batch_size if drop_last else math.ceil(count / batch_size)


def iterate_batches(data, batch_size, rng=None, shuffle=True, drop_last=False):
    """An iterator over the index arrays of one epoch's batches.

    data: the number of items N, or anything with a length (an ImageDataset).
    Yields int64 arrays of `batch_size` indices into [0, N) (the last one shorter unless
    drop_last=True drops it), covering every index exactly once per epoch (less the
    dropped remainder). shuffle=True needs `rng`, a numpy.random.Generator, and draws the
    whole epoch's permutation from it at the call, not lazily, so the generator's state
    after the call does not depend on how many batches are consumed; shuffle=False gives
    0, 1, ..., N-1 and draws nothing.

        for idx in iterate_batches(train, 128, rng):
            x, y = train.images[idx], train.labels[idx]
    """
    count = _count(data)
    stop = num_batches(count, batch_size, drop_last) * batch_size
    if shuffle:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"shuffle=True needs rng, a numpy.random.Generator, got {type(rng)}")
        order = rng.permutation(count)
    else:
        order = np.arange(count, dtype=np.int64)
    return iter([order[start:start + batch_size] for start in range(0, min(stop, count),
                                                                    batch_size)])


def train_val_split(dataset, val_fraction, rng, stratify=True):
    """Split an ImageDataset into (train, val) ImageDatasets, seeded by `rng`.

    val_fraction in (0, 1): the share of items held out. stratify=True holds out
    round(val_fraction * count) items of each class (so the class balance is kept);
    stratify=False holds out round(val_fraction * N) items drawn uniformly. Both parts keep
    the original order of their items; each item lands in exactly one part.
    """
    if not isinstance(dataset, ImageDataset):
        raise TypeError(f"dataset must be an ImageDataset, got {type(dataset)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    labels = dataset.labels
    order = rng.permutation(len(labels))
    if stratify:
        # group the shuffled items by class (stable sort keeps the shuffle within a class)
        grouped = order[np.argsort(labels[order], kind="stable")]
        counts = np.bincount(labels, minlength=dataset.num_classes)   # (K,)
        starts = np.cumsum(counts) - counts                              # (K,)
        rank = np.arange(len(labels)) - np.repeat(starts, counts)        # rank within class
        val_per_class = np.rint(val_fraction * counts).astype(np.int64)
        is_val = rank < np.repeat(val_per_class, counts)
        val_idx, train_idx = grouped[is_val], grouped[~is_val]
    else:
        n_val = int(round(val_fraction * len(labels)))
        val_idx, train_idx = order[:n_val], order[n_val:]
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise ValueError(f"val_fraction={val_fraction} of {len(labels)} items leaves "
                         f"{len(train_idx)} for training and {len(val_idx)} for validation; "
                         f"both must be non-empty")
    return dataset.subset(np.sort(train_idx)), dataset.subset(np.sort(val_idx))
