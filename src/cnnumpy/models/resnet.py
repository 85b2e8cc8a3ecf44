"""Residual networks (He et al. 2016): torchvision's ImageNet ResNets and the paper's CIFAR
ResNets, built from `Residual` blocks."""

from __future__ import annotations

import numpy as np

from ..layers import (AdaptiveAvgPool2D, BatchNorm2D, Conv2D, Flatten, Linear, MaxPool2D,
                      ReLU)
from .containers import Residual, Sequential
from .zoo import ZooModel, check_model_arguments


class _Builder:
    """The layers of one model, drawn from one Generator in one dtype."""

    def __init__(self, rng, dtype):
        self.rng = np.random.default_rng() if rng is None else rng
        self.dtype = dtype

    def conv(self, c_in, c_out, k, stride=1, padding=0) -> Conv2D:
        """A bias-free convolution (BatchNorm follows), torchvision's N(0, 2/fan_out) init."""
        return Conv2D(c_in, c_out, k, stride, padding, rng=self.rng, dtype=self.dtype,
                      init="he_out", bias=False)

    def bn(self, c) -> BatchNorm2D:
        return BatchNorm2D(c, dtype=self.dtype)

    def shortcut(self, c_in, c_out, stride) -> Sequential | None:
        """Identity where the shape stays, else a 1x1 convolution with the stride and
        BatchNorm (the paper's option B; torchvision's `downsample`)."""
        if stride == 1 and c_in == c_out:
            return None
        return Sequential([self.conv(c_in, c_out, 1, stride), self.bn(c_out)])

    def basic_block(self, c_in, c_out, stride) -> Residual:
        """Two 3x3 convolutions (the first with the stride): relu(bn2(conv2(relu(bn1(conv1
        (x))))) + shortcut(x))."""
        return Residual({
            "conv1": self.conv(c_in, c_out, 3, stride, 1), "bn1": self.bn(c_out),
            "relu1": ReLU(),
            "conv2": self.conv(c_out, c_out, 3, 1, 1), "bn2": self.bn(c_out),
        }, self.shortcut(c_in, c_out, stride))

    def bottleneck(self, c_in, width, stride) -> Residual:
        """1x1 down to `width`, 3x3 with the stride (torchvision's "ResNet v1.5"), 1x1 up to
        4·width, each with BatchNorm; ReLU after the first two and after the sum."""
        c_out = 4 * width
        return Residual({
            "conv1": self.conv(c_in, width, 1), "bn1": self.bn(width), "relu1": ReLU(),
            "conv2": self.conv(width, width, 3, stride, 1), "bn2": self.bn(width),
            "relu2": ReLU(),
            "conv3": self.conv(width, c_out, 1), "bn3": self.bn(c_out),
        }, self.shortcut(c_in, c_out, stride))

    def stage(self, block: str, c_in: int, width: int, blocks: int, stride: int):
        """`blocks` blocks, the first with the stride; (Sequential "0", "1", ..., channels out)."""
        make = self.basic_block if block == "basic" else self.bottleneck
        layers = []
        for i in range(blocks):
            layers.append(make(c_in, width, stride if i == 0 else 1))
            c_in = width if block == "basic" else 4 * width
        return Sequential(layers), c_in

    def fc(self, n_in, n_out) -> Linear:
        return Linear(n_in, n_out, rng=self.rng, dtype=self.dtype, init="uniform")


class ResNet(ZooModel):
    """torchvision's ImageNet ResNet, with its module names:

        conv1    Conv2D(C, 64, 7, stride 2, pad 3, no bias)   bn1  BatchNorm2D   relu
        maxpool  MaxPool2D(3, stride 2, pad 1)
        layer1..layer4   stages of `layers[i]` blocks of width 64, 128, 256, 512, the first
                         block of layer2..4 with stride 2 and a 1x1 `downsample` shortcut
        avgpool  AdaptiveAvgPool2D(1)   flatten   fc  Linear(512·expansion, num_classes)

    Blocks: "basic" (two 3x3 convolutions, ResNet-18/34) or "bottleneck" (1x1, 3x3 with the
    stride, 1x1 to 4x the width: ResNet-50), each followed by BatchNorm. ResNet-18:
    11,689,512 parameters, 1.814 G multiply-accumulates at 3x224x224. Every module with
    parameters or buffers has torchvision's name. A module here runs once a pass, so where
    torchvision's block calls its one `relu` two or three times, this block has `relu1`
    (`relu2`) inside the main path and `relu` after the `add` that sums the paths.

    Initialisation as torchvision's: convolutions N(0, 2/fan_out), BatchNorm γ = 1, β = 0,
    fc PyTorch's default U(±1/√fan_in) (torchvision's `zero_init_residual` is off by default).

    Args:
        block: "basic" or "bottleneck".  layers: blocks per stage, e.g. (2, 2, 2, 2).
        num_classes (1000), input_shape ((3, 224, 224)), rng, dtype: as `AlexNet`.
    """

    def __init__(self, block: str = "basic", layers=(2, 2, 2, 2), num_classes: int = 1000,
                 input_shape=(3, 224, 224), *, rng: np.random.Generator | None = None,
                 dtype=np.float32):
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        if not isinstance(layers, (list, tuple)) or len(layers) != 4 or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in layers):
            raise ValueError(f"layers must be four positive block counts, got {layers!r}")
        (c, _, _), num_classes = check_model_arguments(input_shape, num_classes)
        make = _Builder(rng, dtype)
        modules = {"conv1": make.conv(c, 64, 7, 2, 3), "bn1": make.bn(64), "relu": ReLU(),
                   "maxpool": MaxPool2D(3, 2, padding=1)}
        channels = 64
        for i, (width, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            modules[f"layer{i + 1}"], channels = make.stage(block, channels, width, blocks,
                                                            1 if i == 0 else 2)
        modules.update(avgpool=AdaptiveAvgPool2D(1), flatten=Flatten(),
                       fc=make.fc(channels, num_classes))
        super().__init__(modules)
        self._finish("ResNet", {"block": block, "layers": list(layers),
                                "num_classes": num_classes, "input_shape": input_shape})


class CifarResNet(ZooModel):
    """He et al.'s ResNet for small images (section 4.2): 6n + 2 weight layers.

        conv1  Conv2D(C, w, 3, pad 1, no bias)   bn1   relu
        layer1, layer2, layer3   n basic blocks each, of width w, 2w, 4w; the first block of
                                 layer2 and layer3 with stride 2 and a 1x1 convolution +
                                 BatchNorm shortcut (option B)
        avgpool  AdaptiveAvgPool2D(1)   flatten   fc  Linear(4w, num_classes)

    With w = 16: ResNet-20 (n = 3), 272,186 parameters at 1x28x28 with 10 classes (the paper's
    0.27 M, with option A's parameter-free shortcuts); ResNet-32 (n = 5) 0.46 M; ResNet-56
    (n = 9) 0.85 M. Any input channels and size. Initialisation: as `ResNet`.

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110, ...).  width: w (default 16).
        num_classes (10), input_shape ((3, 32, 32)), rng, dtype: as `AlexNet`.
    """

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10,
                 input_shape=(3, 32, 32), *, rng: np.random.Generator | None = None,
                 dtype=np.float32):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 \
                or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 56, ...), got {depth!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        (c, _, _), num_classes = check_model_arguments(input_shape, num_classes)
        n = (depth - 2) // 6
        make = _Builder(rng, dtype)
        modules = {"conv1": make.conv(c, width, 3, 1, 1), "bn1": make.bn(width), "relu": ReLU()}
        channels = width
        for i in range(3):
            modules[f"layer{i + 1}"], channels = make.stage("basic", channels, width * 2 ** i,
                                                            n, 1 if i == 0 else 2)
        modules.update(avgpool=AdaptiveAvgPool2D(1), flatten=Flatten(),
                       fc=make.fc(channels, num_classes))
        super().__init__(modules)
        self._finish("CifarResNet", {"depth": depth, "width": width,
                                     "num_classes": num_classes, "input_shape": input_shape})


def _resnet(name: str, block: str, layers: tuple):
    def build(num_classes: int = 1000, input_shape=(3, 224, 224), **kwargs) -> ResNet:
        return ResNet(block, layers, num_classes, input_shape, **kwargs)

    build.__name__ = name
    build.__doc__ = f"torchvision's `{name}` architecture: {block} blocks {layers} (see `ResNet`)."
    return build


resnet18 = _resnet("resnet18", "basic", (2, 2, 2, 2))
resnet34 = _resnet("resnet34", "basic", (3, 4, 6, 3))
resnet50 = _resnet("resnet50", "bottleneck", (3, 4, 6, 3))


def _cifar_resnet(depth: int):
    def build(num_classes: int = 10, input_shape=(3, 32, 32), **kwargs) -> CifarResNet:
        return CifarResNet(depth, num_classes=num_classes, input_shape=input_shape, **kwargs)

    build.__name__ = f"resnet{depth}"
    build.__doc__ = f"He et al.'s CIFAR ResNet-{depth} (see `CifarResNet`)."
    return build


resnet20, resnet32, resnet56 = (_cifar_resnet(depth) for depth in (20, 32, 56))
