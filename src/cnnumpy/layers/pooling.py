"""Pooling layers: max and average over windows (with padding), adaptive and global average."""

from __future__ import annotations

from .. import functional as F
from .module import Layer, _check_positive, _check_spatial, _window_repr


class _Pool2D(Layer):
    """Shared hyperparameters and shape rule of the pooling layers (no parameters)."""

    def __init__(self, pool_size=2, stride=None, padding=0):
        self.pool_size = _check_positive("pool_size", pool_size)
        self.stride = self.pool_size if stride is None else _check_positive("stride", stride)
        self.padding = _check_positive("padding", padding, minimum=0)
        if any(2 * p > k for p, k in zip(self.padding, self.pool_size)):
            raise ValueError(f"padding must be at most half the pool size (as in PyTorch), got "
                             f"padding {padding!r} for pool_size {pool_size!r}")

    @property
    def window(self):
        return self.pool_size, self.stride, self.padding

    def output_shape(self, input_shape):
        return _check_spatial(self, input_shape, *self.window)

    def _repr_args(self):
        return _window_repr(*self.window, default_stride=self.pool_size)


class MaxPool2D(_Pool2D):
    """Max pooling: the largest value of each window, channel by channel.

        out[n, c, i, j] = max_{m < kH, q < kW} x[n, c, i·sH + m, j·sW + q]

    Backward sends each window's gradient to exactly one input, its first maximum in row-major
    order (as PyTorch); where windows overlap, the gradients of the windows add up.

    Args:
        pool_size: kH = kW, or a (kH, kW) pair (default 2).
        stride: sH = sW, or a pair (default: the pool size, so windows tile the image).
        padding: -inf added on each side (a padded pixel is never a maximum), at most half the
            pool size (default 0).

    Shape:
        input (N, C, H, W) -> output (N, C, H_out, W_out), with
        H_out = floor((H + 2pH - kH) / sH) + 1,  W_out = floor((W + 2pW - kW) / sW) + 1
        (a remainder at the bottom or right is dropped, as in PyTorch).
    """

    def _forward(self, x):
        return F.maxpool2d_forward(x, self.pool_size, self.stride, self.padding)

    def _infer(self, x):
        return F.maxpool2d(x, self.pool_size, self.stride, self.padding)

    def _backward(self, dout, cache):
        return F.maxpool2d_backward(dout, cache)


class AvgPool2D(_Pool2D):
    """Average pooling: the mean of each window, channel by channel.

        out[n, c, i, j] = 1 / (kH·kW) · Σ_{m < kH, q < kW} x[n, c, i·sH + m, j·sW + q]

    Args and Shape: as `MaxPool2D`, but padding adds zeros, which count in the mean of a
    window that reaches into them (PyTorch's default, count_include_pad=True).
    """

    def _forward(self, x):
        return F.avgpool2d_forward(x, self.pool_size, self.stride, self.padding)

    def _backward(self, dout, cache):
        return F.avgpool2d_backward(dout, cache)


def _check_output_size(output_size) -> tuple[int, int]:
    return _check_positive("output_size", output_size)


class AdaptiveAvgPool2D(Layer):
    """Average pooling to a fixed output size, whatever the input size (PyTorch's rule).

        out[n, c, i, j] = mean of x[n, c, h, w] over h in [⌊i·H/oH⌋, ⌈(i+1)·H/oH⌉)
                                             and w in [⌊j·W/oW⌋, ⌈(j+1)·W/oW⌉)

    When oH divides H the windows are those of AvgPool2D(H/oH); otherwise neighbouring
    windows may overlap by a pixel. An output larger than the input repeats pixels.

    Args:
        output_size: oH = oW, or an (oH, oW) pair.

    Shape: input (N, C, H, W) -> output (N, C, oH, oW).
    """

    def __init__(self, output_size):
        self.output_size = _check_output_size(output_size)

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"expects 4-d input (N, C, H, W), got {len(input_shape) + 1}-d")
        return (input_shape[0], *self.output_size)

    def receptive_window(self, input_shape):
        """(kernel, stride, padding) for the receptive-field recurrence: the longest window
        and the mean step between windows, exact when the output size divides the input."""
        sizes = input_shape[1:]
        kernel = tuple(max(stop - start for start, stop in F.adaptive_bounds(n, o))
                       for n, o in zip(sizes, self.output_size))
        stride = tuple(max(1, n // o) for n, o in zip(sizes, self.output_size))
        return kernel, stride, (0, 0)

    def _forward(self, x):
        return F.adaptive_avgpool2d_forward(x, self.output_size)

    def _backward(self, dout, cache):
        return F.adaptive_avgpool2d_backward(dout, cache)

    def _repr_args(self):
        return [str(self.output_size[0]) if self.output_size[0] == self.output_size[1]
                else str(self.output_size)]


class GlobalAvgPool2D(AdaptiveAvgPool2D):
    """The mean of every map: AdaptiveAvgPool2D(1), (N, C, H, W) -> (N, C, 1, 1)."""

    def __init__(self):
        super().__init__(1)

    def _repr_args(self):
        return []
