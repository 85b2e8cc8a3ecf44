"""Convolution layer."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from ..init import initial_parameters
from .module import Layer, _check_positive, _check_spatial, _window_repr


class Conv2D(Layer):
    """2-d convolution (cross-correlation, as in the lesson and PyTorch) over NCHW images.

        out[n, o, i, j] = b[o] + Σ_c Σ_m Σ_q W[o, c, m, q] · x_pad[n, c, i·sH + m, j·sW + q]

    where x_pad is x with `padding` zeros on each side.

    Args:
        in_channels, out_channels: C_in and C_out.
        kernel_size: kH = kW, or an (kH, kW) pair.
        stride: sH = sW, or a pair (default 1).
        padding: zeros added on each side, pH = pW, or a pair (default 0).
        rng: `numpy.random.Generator` for the initial weights (default: a fresh one).
        dtype: float32 (default) or float64.
        init: "he" (default), "uniform" (PyTorch's default), or torchvision's "he_out" and
            "normal", see `cnnumpy.init`.
        bias: whether there is a b (default True); a convolution followed by BatchNorm needs
            none (the normalisation subtracts any constant), as in ResNet.

    Shape:
        input (N, C_in, H, W) -> output (N, C_out, H_out, W_out), with
        H_out = floor((H + 2pH - kH) / sH) + 1,  W_out = floor((W + 2pW - kW) / sW) + 1.

    Parameters:
        W: (C_out, C_in, kH, kW), He-initialised: N(0, 2 / (C_in·kH·kW)).
        b: (C_out,), zeros (absent with bias=False).
        (with init="uniform": W and b ~ U(-1/√(C_in·kH·kW), 1/√(C_in·kH·kW)))
    """

    param_names = ("W", "b")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, *,
                 rng: np.random.Generator | None = None, dtype=np.float32, init: str = "he",
                 bias: bool = True):
        if not isinstance(bias, (bool, np.bool_)):
            raise ValueError(f"bias must be True or False, got {bias!r}")
        self.in_channels = _check_positive("in_channels", in_channels)[0]
        self.out_channels = _check_positive("out_channels", out_channels)[0]
        self.kernel_size = _check_positive("kernel_size", kernel_size)
        self.stride = _check_positive("stride", stride)
        self.padding = _check_positive("padding", padding, minimum=0)
        rng = np.random.default_rng() if rng is None else rng
        kh, kw = self.kernel_size
        shape = (self.out_channels, self.in_channels, kh, kw)
        self.W, b = initial_parameters(init, rng, shape, self.in_channels * kh * kw, dtype)
        self.dW = np.zeros_like(self.W)
        if bias:
            self.b, self.db = b, np.zeros_like(b)
        else:
            self.param_names = ("W",)

    @property
    def window(self):
        return self.kernel_size, self.stride, self.padding

    def output_shape(self, input_shape):
        c, h_out, w_out = _check_spatial(self, input_shape, *self.window)
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {c}")
        return self.out_channels, h_out, w_out

    @property
    def bias(self) -> bool:
        return "b" in self.param_names

    def _forward(self, x):
        read = F.conv2d_holds_input(x, self.W, self.stride, self.padding)
        if read is not None:  # the cache holds x (or a view of it): not the caller's array
            x = self._held(x, channels_last=read == "channels-last")
        return F.conv2d_forward(x, self.W, self.b if self.bias else None, self.stride,
                                self.padding)

    def _infer(self, x):
        return F.conv2d(x, self.W, self.b if self.bias else None, self.stride, self.padding)

    def infer_fused(self, x: np.ndarray, bn=None, relu: bool = False) -> np.ndarray:
        """For inference, this layer followed by `bn` (a BatchNorm2D of its output channels
        and dtype in evaluation mode, or None) and then, with relu=True, a ReLU, as one
        convolution. The BatchNorm is folded into the weights and bias
        (`F.batchnorm_folded`), so the output takes one pass (the bias) where BatchNorm's
        scaling and shift took two; the bias and the ReLU go onto the output chunk by chunk
        while it is in the cache (`F.conv2d`), where ReLU alone made a new array. Equal to
        the layers in turn up to float rounding (with no BatchNorm, exactly). Keeps no
        cache; the caller clears the others' (`models.containers.run_in_order`)."""
        self._check_input(x)
        self.cache = None
        w, b = self.W, self.b if self.bias else None
        if bn is not None:
            if bn.training or bn.num_features != self.out_channels or bn.dtype != self.dtype:
                raise ValueError(f"can fold only a BatchNorm2D of {self.out_channels} "
                                 f"{self.dtype} channels in evaluation mode, got {bn!r} "
                                 f"({bn.dtype}, training={bn.training})")
            w, b = F.batchnorm_folded(w, b, bn.gamma, bn.beta, bn.running_mean,
                                      bn.running_var, bn.eps)
        return F.conv2d(x, w, b, self.stride, self.padding, relu=relu)

    def folding_pays(self, x) -> bool:
        """Whether folding a BatchNorm into this layer (`infer_fused`) saves time on x: it is a
        pass over the weights, which pays where each output channel has more outputs than
        weights (N·H_out·W_out > C_in·kH·kW: ResNet-20 on a batch, not ResNet-18's last
        layers on one image). False for an input this layer cannot take (its forward says
        why)."""
        if not isinstance(x, np.ndarray) or x.ndim != 4:
            return False
        try:
            _, h_out, w_out = self.output_shape(x.shape[1:])
        except ValueError:
            return False
        return len(x) * h_out * w_out > self.W[0].size

    def _backward(self, dout, cache, input_grad=True):
        dx, dW, db = F.conv2d_backward(dout, cache, input_grad)
        self._gradient("W")[...] = dW  # (C_out, C_in, kH, kW) from the kernel's (K, C_out)
        if self.bias:
            self._gradient("b")[...] = db
        return dx

    def _repr_args(self):
        return [str(self.in_channels), str(self.out_channels),
                *_window_repr(*self.window, default_stride=(1, 1)),
                *([] if self.bias else ["bias=False"])]
