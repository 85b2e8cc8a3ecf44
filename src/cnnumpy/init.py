"""Initial weights and biases of the layers with parameters (Conv2D, Linear).

    "he"       W ~ N(0, 2 / fan_in),            b = 0     the lesson's He initialisation
    "uniform"  W ~ U(-1/√fan_in, 1/√fan_in),    b ~ U(-1/√fan_in, 1/√fan_in)
               (PyTorch's default for Conv2d and Linear: kaiming_uniform with a = √5)
    "he_out"   W ~ N(0, 2 / fan_out),           b = 0     torchvision's for the convolutions
               of ResNet and VGG (kaiming_normal_, mode "fan_out"); fan_out = C_out·kH·kW
    "normal"   W ~ N(0, 0.01²),                 b = 0     torchvision's for VGG's linear layers

fan_in is the number of inputs of one output unit: C_in·kH·kW for a convolution,
in_features for a linear layer. He keeps the variance of ReLU activations constant from
layer to layer; the uniform draw is smaller by a factor √6 in standard deviation.
"""

from __future__ import annotations

import math

import numpy as np

from .validate import check_rng

INITS = ("he", "uniform", "he_out", "normal")
# The most values one weight array may hold (2^27: 512 MiB in float32, VGG-16's largest layer
# has 103 M). A larger layer is a mistake, not a model: refused before anything is drawn.
MAX_LAYER_VALUES = 1 << 27


def initial_parameters(init: str, rng: np.random.Generator, weight_shape: tuple[int, ...],
                       fan_in: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of shapes `weight_shape` and (weight_shape[0],), drawn from rng in `dtype`."""
    values = math.prod(int(size) for size in weight_shape)
    if values > MAX_LAYER_VALUES:
        raise ValueError(f"weights of shape {tuple(weight_shape)} would hold {values} values, "
                         f"more than the {MAX_LAYER_VALUES} a layer may have (a layer or an "
                         f"input image far larger than intended?)")
    check_rng("rng", rng)
    if init not in INITS:
        raise ValueError(f"init must be one of {list(INITS)}, got {init!r}")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
    if init == "he":
        weight = rng.standard_normal(weight_shape) * np.sqrt(2.0 / fan_in)
        bias = np.zeros(weight_shape[0])
    elif init in ("he_out", "normal"):  # drawn in the target dtype: VGG has 138 M weights
        fan_out = weight_shape[0] * int(np.prod(weight_shape[2:], dtype=np.int64))
        std = np.sqrt(2.0 / fan_out) if init == "he_out" else 0.01
        weight = rng.standard_normal(weight_shape, dtype=np.dtype(dtype).type)
        weight *= np.dtype(dtype).type(std)
        bias = np.zeros(weight_shape[0])
    else:
        bound = 1.0 / np.sqrt(fan_in)
        weight = rng.uniform(-bound, bound, weight_shape)
        bias = rng.uniform(-bound, bound, weight_shape[0])
    return weight.astype(dtype, copy=False), bias.astype(dtype)


class ZeroDraws(np.random.Generator):
    """A Generator whose draws are all 0: layers built with it cost no random draws, for
    where the weights are set right after (`cnnumpy.interop` reading a file) or only shapes
    matter (parameter counts, names). A VGG has 138 M weights."""

    def __init__(self):
        super().__init__(np.random.PCG64(0))

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        return np.zeros(size, dtype)

    def uniform(self, low=0.0, high=1.0, size=None):
        return np.zeros(size)

    def integers(self, low, high=None, size=None, dtype=np.int64, endpoint=False):
        return 0
