"""AlexNet (Krizhevsky et al. 2012), in the single-tower form of torchvision's `alexnet`."""

from __future__ import annotations

import numpy as np

from ..layers import AdaptiveAvgPool2D, Conv2D, Dropout, Flatten, Linear, MaxPool2D, ReLU
from .containers import Sequential
from .zoo import ZooModel, check_model_arguments


class AlexNet(ZooModel):
    """Five convolutions and three fully connected layers, with torchvision's names:

        features    0 Conv2D(C, 64, 11, stride 4, pad 2)  1 ReLU  2 MaxPool2D(3, stride 2)
                    3 Conv2D(64, 192, 5, pad 2)           4 ReLU  5 MaxPool2D(3, stride 2)
                    6 Conv2D(192, 384, 3, pad 1)  7 ReLU  8 Conv2D(384, 256, 3, pad 1)  9 ReLU
                    10 Conv2D(256, 256, 3, pad 1) 11 ReLU 12 MaxPool2D(3, stride 2)
        avgpool     AdaptiveAvgPool2D(6)          flatten  Flatten
        classifier  0 Dropout  1 Linear(9216, 4096)  2 ReLU  3 Dropout  4 Linear(4096, 4096)
                    5 ReLU  6 Linear(4096, num_classes)

    61,100,840 parameters and 0.714 G multiply-accumulates at 3x224x224 (torchvision's
    figures). Initialisation: PyTorch's default (`init="uniform"`), as torchvision's AlexNet.

    Args:
        num_classes: logits (default 1000).
        input_shape: (C, H, W), at least 63x63 (default (3, 224, 224)).
        dropout: p of the two Dropout layers (default 0.5).
        input_padding: zero pixels added around the input by a first ZeroPad2D named "pad"
            (default 0: none), so that smaller images fit, e.g. 18 for 28x28 ones.
        rng, dtype: the Generator of the initial weights and the dropout streams; float32 or
            float64.

    Shape: input (N, C, H, W) -> logits (N, num_classes).
    """

    def __init__(self, num_classes: int = 1000, input_shape=(3, 224, 224), *,
                 dropout: float = 0.5, input_padding: int = 0,
                 rng: np.random.Generator | None = None, dtype=np.float32):
        (c, _, _), num_classes = check_model_arguments(input_shape, num_classes)
        rng = np.random.default_rng() if rng is None else rng

        def conv(c_in, c_out, k, stride=1, padding=0):
            return Conv2D(c_in, c_out, k, stride, padding, rng=rng, dtype=dtype, init="uniform")

        def linear(n_in, n_out):
            return Linear(n_in, n_out, rng=rng, dtype=dtype, init="uniform")

        features = Sequential([
            conv(c, 64, 11, 4, 2), ReLU(), MaxPool2D(3, 2),
            conv(64, 192, 5, padding=2), ReLU(), MaxPool2D(3, 2),
            conv(192, 384, 3, padding=1), ReLU(),
            conv(384, 256, 3, padding=1), ReLU(),
            conv(256, 256, 3, padding=1), ReLU(), MaxPool2D(3, 2),
        ])
        classifier = Sequential([
            Dropout(dropout, rng=rng), linear(256 * 6 * 6, 4096), ReLU(),
            Dropout(dropout, rng=rng), linear(4096, 4096), ReLU(),
            linear(4096, num_classes),
        ])
        super().__init__(self._padded({"features": features, "avgpool": AdaptiveAvgPool2D(6),
                                       "flatten": Flatten(), "classifier": classifier},
                                      input_padding))
        self._finish("AlexNet", {"num_classes": num_classes, "input_shape": input_shape,
                                 "dropout": dropout, "input_padding": input_padding})


def alexnet(num_classes: int = 1000, input_shape=(3, 224, 224), **kwargs) -> AlexNet:
    """torchvision's `alexnet` architecture (see `AlexNet`)."""
    return AlexNet(num_classes, input_shape, **kwargs)
