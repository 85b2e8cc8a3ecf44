"""Initial weights and biases of the layers with parameters (Conv2D, Linear).

    "he"       W ~ N(0, 2 / fan_in),            b = 0     the lesson's He initialisation
    "uniform"  W ~ U(-1/√fan_in, 1/√fan_in),    b ~ U(-1/√fan_in, 1/√fan_in)
               (PyTorch's default for Conv2d and Linear: kaiming_uniform with a = √5)

fan_in is the number of inputs of one output unit: C_in·kH·kW for a convolution,
in_features for a linear layer. He keeps the variance of ReLU activations constant from
layer to layer; the uniform draw is smaller by a factor √6 in standard deviation.
"""

from __future__ import annotations

import numpy as np

INITS = ("he", "uniform")


def initial_parameters(init: str, rng: np.random.Generator, weight_shape: tuple[int, ...],
                       fan_in: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of shapes `weight_shape` and (weight_shape[0],), drawn from rng in `dtype`."""
    if init not in INITS:
        raise ValueError(f"init must be one of {list(INITS)}, got {init!r}")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
    if init == "he":
        weight = rng.standard_normal(weight_shape) * np.sqrt(2.0 / fan_in)
        bias = np.zeros(weight_shape[0])
    else:
        bound = 1.0 / np.sqrt(fan_in)
        weight = rng.uniform(-bound, bound, weight_shape)
        bias = rng.uniform(-bound, bound, weight_shape[0])
    return weight.astype(dtype), bias.astype(dtype)
