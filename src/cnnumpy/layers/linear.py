"""Flatten and the fully connected layer."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..init import initial_parameters
from .module import Layer, _check_positive


class Flatten(Layer):
    """Flatten every sample to a vector, keeping the batch axis.

    Shape: (N, d1, d2, ...) -> (N, d1·d2·...).
    """

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape, dtype=np.int64)),)

    def _forward(self, x):
        return F.flatten_forward(x)

    def _backward(self, dout, cache):
        return F.flatten_backward(dout, cache)


class Linear(Layer):
    """Fully connected layer: out = x · Wᵀ + b.

    Args:
        in_features, out_features: sizes of each input and output sample.
        rng: `numpy.random.Generator` for the initial weights (default: a fresh one).
        dtype: float32 (default) or float64.
        init: "he" (default), "uniform" (PyTorch's default), or torchvision's "he_out" and
            "normal", see `cnnumpy.init`.

    Shape:
        input (N, in_features) -> output (N, out_features).

    Parameters:
        W: (out_features, in_features), He-initialised: N(0, 2 / in_features).
        b: (out_features,), zeros.
        (with init="uniform": W and b ~ U(-1/√in_features, 1/√in_features))
    """

    param_names = ("W", "b")

    def __init__(self, in_features, out_features, *, rng: np.random.Generator | None = None,
                 dtype=np.float32, init: str = "he"):
        self.in_features = _check_positive("in_features", in_features)[0]
        self.out_features = _check_positive("out_features", out_features)[0]
        rng = np.random.default_rng() if rng is None else rng
        shape = (self.out_features, self.in_features)
        self.W, self.b = initial_parameters(init, rng, shape, self.in_features, dtype)
        self.dW = np.zeros_like(self.W)
        self.db = np.zeros_like(self.b)

    def output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(
                f"expects 2-d input (N, features), got {len(input_shape) + 1}-d; "
                f"put a Flatten before it"
            )
        if input_shape[0] != self.in_features:
            raise ValueError(f"expected {self.in_features} input features, got {input_shape[0]}")
        return (self.out_features,)

    def _forward(self, x):
        return F.linear_forward(self._held(x), self.W, self.b)  # the cache holds the input

    def _infer(self, x):
        return F.linear_forward(x, self.W, self.b)[0]

    def _backward(self, dout, cache, input_grad=True):
        gradients = self._gradient("W"), self._gradient("b")
        return F.linear_backward(dout, cache, input_grad, out=gradients)[0]

    def _repr_args(self):
        return [str(self.in_features), str(self.out_features)]
