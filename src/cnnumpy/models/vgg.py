"""VGG (Simonyan and Zisserman 2015): stacks of 3x3 convolutions, as torchvision's `vgg*`."""

from __future__ import annotations

import numpy as np

from ..layers import (AdaptiveAvgPool2D, BatchNorm2D, Conv2D, Dropout, Flatten, Linear,
                      MaxPool2D, ReLU)
from .containers import Sequential
from .zoo import ZooModel, check_model_arguments

# Output channels of the 3x3 convolutions, "M" for a 2x2 max-pool: the paper's configurations
# A (11 weight layers), B (13), D (16) and E (19).
CONFIGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


class VGG(ZooModel):
    """`features` (3x3 convolutions with padding 1, each followed by BatchNorm2D when
    `batch_norm`, and ReLU; 2x2 max-pools), `avgpool` AdaptiveAvgPool2D(7), `flatten`, and
    `classifier`: Linear(512·7·7, 4096), ReLU, Dropout, Linear(4096, 4096), ReLU, Dropout,
    Linear(4096, num_classes); modules numbered as torchvision's (`features.0`,
    `classifier.6`). VGG-16: 138,357,544 parameters, 15.47 G multiply-accumulates at
    3x224x224.

    Initialisation as torchvision's: convolutions N(0, 2/fan_out) (`init="he_out"`) with zero
    bias, BatchNorm γ = 1 and β = 0, linear layers N(0, 0.01²) with zero bias.

    Args:
        depth: 11, 13, 16 or 19 weight layers (default 16).
        batch_norm: BatchNorm2D after every convolution (default False).
        num_classes, input_shape (at least 32x32 with the padding; default (3, 224, 224)),
        dropout (0.5), input_padding (0), rng, dtype: as `AlexNet`.
    """

    def __init__(self, depth: int = 16, batch_norm: bool = False, num_classes: int = 1000,
                 input_shape=(3, 224, 224), *, dropout: float = 0.5,
                 input_padding: int = 0, rng: np.random.Generator | None = None,
                 dtype=np.float32):
        if depth not in CONFIGS:
            raise ValueError(f"depth must be one of {sorted(CONFIGS)}, got {depth!r}")
        if not isinstance(batch_norm, (bool, np.bool_)):
            raise ValueError(f"batch_norm must be True or False, got {batch_norm!r}")
        (channels, _, _), num_classes = check_model_arguments(input_shape, num_classes)
        rng = np.random.default_rng() if rng is None else rng
        layers = []
        for item in CONFIGS[depth]:
            if item == "M":
                layers.append(MaxPool2D(2, 2))
                continue
            layers.append(Conv2D(channels, item, 3, padding=1, rng=rng, dtype=dtype,
                                 init="he_out"))
            if batch_norm:
                layers.append(BatchNorm2D(item, dtype=dtype))
            layers.append(ReLU())
            channels = item

        def linear(n_in, n_out):
            return Linear(n_in, n_out, rng=rng, dtype=dtype, init="normal")

        classifier = Sequential([
            linear(512 * 7 * 7, 4096), ReLU(), Dropout(dropout, rng=rng),
            linear(4096, 4096), ReLU(), Dropout(dropout, rng=rng),
            linear(4096, num_classes),
        ])
        super().__init__(self._padded({"features": Sequential(layers),
                                       "avgpool": AdaptiveAvgPool2D(7), "flatten": Flatten(),
                                       "classifier": classifier}, input_padding))
        self._finish("VGG", {"depth": depth, "batch_norm": bool(batch_norm),
                             "num_classes": num_classes, "input_shape": input_shape,
                             "dropout": dropout, "input_padding": input_padding})


def _vgg(depth: int, batch_norm: bool):
    def build(num_classes: int = 1000, input_shape=(3, 224, 224), **kwargs) -> VGG:
        return VGG(depth, batch_norm, num_classes, input_shape, **kwargs)

    build.__name__ = f"vgg{depth}" + ("_bn" if batch_norm else "")
    build.__doc__ = f"torchvision's `{build.__name__}` architecture (see `VGG`)."
    return build


vgg11, vgg13, vgg16, vgg19 = (_vgg(depth, False) for depth in (11, 13, 16, 19))
vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn = (_vgg(depth, True) for depth in (11, 13, 16, 19))
