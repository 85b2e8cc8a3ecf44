"""The lesson's classifier."""

from __future__ import annotations

import numpy as np

from ..layers import Conv2D, Flatten, Linear, MaxPool2D, ReLU
from .containers import Sequential


class SimpleCNN(Sequential):
    """The lesson's classifier: Conv-ReLU-Pool-Conv-ReLU-Pool-Flatten-FC-ReLU-FC.

        conv1  Conv2D(C, 32, 3, padding=1)     pool1  MaxPool2D(2)
        conv2  Conv2D(32, 64, 3, padding=1)    pool2  MaxPool2D(2)
        fc1    Linear(64·⌊⌊H/2⌋/2⌋·⌊⌊W/2⌋/2⌋, 512)    fc2  Linear(512, num_classes)

    with a ReLU after conv1, conv2 and fc1. The flatten size is computed from `input_shape`.

    Args:
        input_shape: (C, H, W) of one image, H and W at least 4 (default (3, 32, 32)).
        num_classes: number of output logits (default 10).
        rng: `numpy.random.Generator` for the initial weights (default: a fresh one).
        dtype: float32 (default) or float64.
        init: initialisation of every layer, "he" (default, the lesson's) or "uniform"
            (PyTorch's default), see `cnnumpy.init`.

    Shape:
        input (N, C, H, W) -> logits (N, num_classes).
    """

    def __init__(self, input_shape=(3, 32, 32), num_classes: int = 10, *,
                 rng: np.random.Generator | None = None, dtype=np.float32, init: str = "he"):
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or not all(
            isinstance(v, (int, np.integer)) and v >= 1 for v in input_shape
        ):
            raise ValueError(f"input_shape must be (C, H, W) positive integers, got {input_shape!r}")
        if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        rng = np.random.default_rng() if rng is None else rng
        channels, height, width = input_shape
        features = Sequential({
            "conv1": Conv2D(channels, 32, 3, padding=1, rng=rng, dtype=dtype, init=init),
            "relu1": ReLU(),
            "pool1": MaxPool2D(2),
            "conv2": Conv2D(32, 64, 3, padding=1, rng=rng, dtype=dtype, init=init),
            "relu2": ReLU(),
            "pool2": MaxPool2D(2),
            "flatten": Flatten(),
        })
        try:
            (flat_size,) = features.output_shape(input_shape)
        except ValueError:
            raise ValueError(
                f"SimpleCNN needs images of at least 4x4 pixels, got input_shape {input_shape}"
            ) from None
        super().__init__({
            **features.layers,
            "fc1": Linear(flat_size, 512, rng=rng, dtype=dtype, init=init),
            "relu3": ReLU(),
            "fc2": Linear(512, num_classes, rng=rng, dtype=dtype, init=init),
        })
        self.input_shape = tuple(int(v) for v in input_shape)
        self.num_classes = int(num_classes)

    def config(self) -> dict:
        """The architecture's constructor arguments, JSON-ready (for checkpoints); not `init`,
        which only draws the first weights."""
        return {"name": "SimpleCNN", "input_shape": list(self.input_shape),
                "num_classes": self.num_classes}
