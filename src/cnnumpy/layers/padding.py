"""Zero padding as a layer of its own (small images made large enough for a network), and the
Identity (what `cnnumpy.models.fold_batchnorm` leaves where a BatchNorm was)."""

from __future__ import annotations

from .. import functional as F
from .module import Layer, _check_positive, _pair_repr


class ZeroPad2D(Layer):
    """Zeros added around every image: (N, C, H, W) -> (N, C, H + 2pH, W + 2pW).

    The zoo's AlexNet and VGG need images of at least 63x63 and 32x32 pixels; with
    `input_padding` they start with one of these, so that 28x28 Fashion-MNIST images fit
    (LeNet-5 met MNIST the same way, padded to 32x32). Backward drops the border.

    Args:
        padding: pH = pW, or a (pH, pW) pair.
    """

    def __init__(self, padding):
        self.padding = _check_positive("padding", padding, minimum=0)

    def receptive_window(self, input_shape):
        return (1, 1), (1, 1), self.padding

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"expects 4-d input (N, C, H, W), got {len(input_shape) + 1}-d")
        c, h, w = input_shape
        return c, h + 2 * self.padding[0], w + 2 * self.padding[1]

    def _forward(self, x):
        return F.pad2d(x, self.padding), None

    def _backward(self, dout, cache):
        return F.unpad2d(dout, self.padding)

    def _repr_args(self):
        return [_pair_repr(self.padding)]


class Identity(Layer):
    """out = x (what a folded BatchNorm becomes). Shape: any -> the same."""

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def _forward(self, x):
        return x, None

    def _backward(self, dout, cache):
        return dout
