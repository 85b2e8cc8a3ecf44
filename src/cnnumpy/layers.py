"""The lesson's layers: thin stateful wrappers around the kernels of `cnnumpy.functional`.

A layer owns its parameters (`W`, `b`), their gradients (`dW`, `db`) and one `cache` from
its last forward pass, and nothing else. Every layer has

    out = layer.forward(x)       # checks the input, calls the kernel, keeps the cache
    out = layer.forward(x, keep_cache=False)   # inference: no cache, less work and memory
    dx = layer.backward(dout)    # exact gradient of the scalar `dout` came from; sets dW, db
    layer.backward(dout, input_grad=False)  # sets dW, db only; returns None (a first layer)

Parameter walking (the contract optimizers and checkpoints rely on), for a layer or a model:

    module.parameters()  -> {"conv1.W": array, "conv1.b": array, ...}   live arrays
    module.gradients()   -> the same keys -> the gradients of the last backward

Names are dotted paths (`conv1.W`); a lone layer's names are just `W` and `b`. Updating the
arrays of `parameters()` in place updates the model.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from . import functional as F
from .functional import pair
from .init import initial_parameters
from .shapes import conv_output_size


def _shape_error(layer: "Layer", message: str, shape) -> ValueError:
    return ValueError(f"{type(layer).__name__} {message} (input shape {tuple(shape)})")


class Module:
    """Base of layers and models: parameter walking, the train/eval flag, dtype conversion."""

    training = True

    def forward(self, x: np.ndarray, keep_cache: bool = True) -> np.ndarray:
        """The output for a batch x. With keep_cache=False (inference), the layers keep
        nothing for backward, and skip the work that only backward needs (ReLU's mask,
        max-pooling's offsets of the maxima)."""
        raise NotImplementedError

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Gradient for the input of the last forward (None when input_grad is False: only the
        parameter gradients are made, as for the images under a model's first layer)."""
        raise NotImplementedError

    def __call__(self, x: np.ndarray, keep_cache: bool = True) -> np.ndarray:
        return self.forward(x) if keep_cache else self.forward(x, keep_cache=False)

    def named_layers(self, prefix: str = "") -> Iterator[tuple[str, "Layer"]]:
        """(dotted name, layer) of every leaf layer, in forward order."""
        raise NotImplementedError

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one output sample for one input sample (no batch axis); checks the shape."""
        raise NotImplementedError

    def parameters(self) -> dict[str, np.ndarray]:
        """Every parameter array by dotted name (live: in-place updates change the model)."""
        return {
            _join(name, key): value
            for name, layer in self.named_layers()
            for key, value in layer._own("")
        }

    def gradients(self) -> dict[str, np.ndarray]:
        """The gradient of every parameter from the last `backward`, same keys as parameters()."""
        return {
            _join(name, key): value
            for name, layer in self.named_layers()
            for key, value in layer._own("d")
        }

    def zero_grad(self) -> None:
        for grad in self.gradients().values():
            grad[...] = 0

    def load_parameters(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy arrays into the parameters of the same names (shapes must match; cast to dtype)."""
        params = self.parameters()
        missing = sorted(set(params) - set(arrays))
        unexpected = sorted(set(arrays) - set(params))
        if missing or unexpected:
            raise ValueError(
                f"parameter names do not match: missing {missing}, unexpected {unexpected}"
            )
        for name, param in params.items():
            value = np.asarray(arrays[name])
            if value.shape != param.shape:
                raise ValueError(
                    f"parameter {name} has shape {param.shape}, got an array of shape {value.shape}"
                )
            np.copyto(param, value, casting="same_kind")

    def summary(self, input_shape: tuple[int, ...]) -> str:
        """The table of `cnnumpy.summary` (shapes, parameters, MACs, receptive fields) as text."""
        from .summary import summary_table  # imported here: summary imports this module

        return summary_table(self, input_shape)

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters().values())

    def train(self, mode: bool = True) -> "Module":
        """Set training mode (True) or evaluation mode (False) on this module and its layers."""
        for _, layer in self.named_layers():
            layer.training = mode
        self.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def astype(self, dtype) -> "Module":
        """Convert parameters and gradients to `dtype` (float32 or float64), in place; returns self."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"parameters must be float32 or float64, got {dtype}")
        for _, layer in self.named_layers():
            for key in layer.param_names:
                for attr in (key, "d" + key):
                    setattr(layer, attr, getattr(layer, attr).astype(dtype))
        return self

    @property
    def dtype(self) -> np.dtype | None:
        """dtype of the parameters (None for a module without parameters)."""
        params = list(self.parameters().values())
        return params[0].dtype if params else None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class Layer(Module):
    """A leaf layer: validates its input, calls a kernel, keeps the cache for backward.

    Subclasses set `param_names` and implement `output_shape`, `_forward(x) -> (out, cache)`
    and `_backward(dout, cache) -> dx`, which stores the parameter gradients; a layer with
    parameters also takes `input_grad=False`, to store them without making dx (returns None).
    `_infer(x) -> out` is the forward pass without a cache (by default `_forward`'s output).
    """

    param_names: tuple[str, ...] = ()
    cache = None
    # (kernel, stride, padding) pairs of a windowed layer, for receptive fields; None otherwise.
    window = None

    def named_layers(self, prefix: str = "") -> Iterator[tuple[str, "Layer"]]:
        yield prefix, self

    def _own(self, grad_prefix: str) -> Iterator[tuple[str, np.ndarray]]:
        for key in self.param_names:
            yield key, getattr(self, grad_prefix + key)

    def forward(self, x: np.ndarray, keep_cache: bool = True) -> np.ndarray:
        name = type(self).__name__
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} expects a NumPy array, got {type(x).__name__}")
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(
                f"{name} expects a floating-point input (float32 or float64), got {x.dtype}; "
                f"convert it first, e.g. x.astype(np.float32)"
            )
        if self.param_names and x.dtype != self.dtype:
            raise TypeError(
                f"{name} has {self.dtype} parameters but got a {x.dtype} input; "
                f"convert the input (x.astype(np.{self.dtype})) or the model (.astype(np.{x.dtype}))"
            )
        if x.ndim < 1 or x.shape[0] == 0:
            raise _shape_error(self, "expects a non-empty batch", x.shape)
        try:
            self.output_shape(x.shape[1:])
        except ValueError as err:
            raise _shape_error(self, str(err), x.shape) from None
        self.cache = None  # the last step's cache is dead: free it before making the next one
        if not keep_cache:
            return self._infer(x)
        out, cache = self._forward(x)
        self.cache = (x.shape, x.dtype, cache)
        return out

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        name = type(self).__name__
        if self.cache is None:
            raise RuntimeError(f"{name}.backward called before forward (or after a "
                               f"forward with keep_cache=False, which keeps nothing for it)")
        x_shape, x_dtype, cache = self.cache
        expected = (x_shape[0], *self.output_shape(x_shape[1:]))
        if not isinstance(dout, np.ndarray) or dout.shape != expected:
            got = dout.shape if isinstance(dout, np.ndarray) else type(dout).__name__
            raise ValueError(
                f"{name}.backward expected a gradient of shape {expected} (the output of the last "
                f"forward), got {got}"
            )
        if dout.dtype != x_dtype:
            raise TypeError(f"{name}.backward expected a {x_dtype} gradient, got {dout.dtype}")
        if input_grad:
            return self._backward(dout, cache)
        if self.param_names:
            return self._backward(dout, cache, input_grad=False)
        return None  # no parameters, and no one wants dx

    def _forward(self, x):
        raise NotImplementedError

    def _infer(self, x):
        return self._forward(x)[0]

    def _backward(self, dout, cache):
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(self._repr_args())
        return f"{type(self).__name__}({args})"

    def _repr_args(self) -> list[str]:
        return []


def _check_positive(name: str, value, minimum: int = 1) -> tuple[int, int]:
    """Validate an int-or-pair hyperparameter; ValueError names it and what was received."""
    values = value if isinstance(value, (tuple, list)) else (value, value)
    ok = len(values) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum
        for v in values
    )
    if not ok:
        raise ValueError(
            f"{name} must be an integer >= {minimum} or a pair of them, got {value!r}"
        )
    return pair(values)


def _pair_repr(value: tuple[int, int]) -> str:
    return str(value[0]) if value[0] == value[1] else str(value)


def _window_repr(kernel, stride, padding, default_stride) -> list[str]:
    args = [_pair_repr(kernel)]
    if stride != default_stride:
        args.append(f"stride={_pair_repr(stride)}")
    if padding != (0, 0):
        args.append(f"padding={_pair_repr(padding)}")
    return args


def _check_spatial(layer, input_shape, kernel, stride, padding) -> tuple[int, int, int]:
    """Output (C, H_out, W_out) of a windowed layer, with errors that name the problem."""
    if len(input_shape) != 3:
        raise ValueError(
            f"expects 4-d input (N, C, H, W), got {len(input_shape) + 1}-d"
        )
    c, h, w = input_shape
    try:
        h_out = conv_output_size(h, kernel[0], stride[0], padding[0])
        w_out = conv_output_size(w, kernel[1], stride[1], padding[1])
    except ValueError:
        raise ValueError(
            f"window {kernel} with padding {padding} does not fit in a {h}x{w} image"
        ) from None
    return c, h_out, w_out


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
        init: "he" (default) or "uniform" (PyTorch's default), see `cnnumpy.init`.

    Shape:
        input (N, C_in, H, W) -> output (N, C_out, H_out, W_out), with
        H_out = floor((H + 2pH - kH) / sH) + 1,  W_out = floor((W + 2pW - kW) / sW) + 1.

    Parameters:
        W: (C_out, C_in, kH, kW), He-initialised: N(0, 2 / (C_in·kH·kW)).
        b: (C_out,), zeros.
        (with init="uniform": W and b ~ U(-1/√(C_in·kH·kW), 1/√(C_in·kH·kW)))
    """

    param_names = ("W", "b")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, *,
                 rng: np.random.Generator | None = None, dtype=np.float32, init: str = "he"):
        self.in_channels = _check_positive("in_channels", in_channels)[0]
        self.out_channels = _check_positive("out_channels", out_channels)[0]
        self.kernel_size = _check_positive("kernel_size", kernel_size)
        self.stride = _check_positive("stride", stride)
        self.padding = _check_positive("padding", padding, minimum=0)
        rng = np.random.default_rng() if rng is None else rng
        kh, kw = self.kernel_size
        shape = (self.out_channels, self.in_channels, kh, kw)
        self.W, self.b = initial_parameters(init, rng, shape, self.in_channels * kh * kw, dtype)
        self.dW = np.zeros_like(self.W)
        self.db = np.zeros_like(self.b)

    @property
    def window(self):
        return self.kernel_size, self.stride, self.padding

    def output_shape(self, input_shape):
        c, h_out, w_out = _check_spatial(self, input_shape, *self.window)
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {c}")
        return self.out_channels, h_out, w_out

    def _forward(self, x):
        return F.conv2d_forward(x, self.W, self.b, self.stride, self.padding)

    def _backward(self, dout, cache, input_grad=True):
        dx, self.dW, self.db = F.conv2d_backward(dout, cache, input_grad)
        return dx

    def _repr_args(self):
        return [str(self.in_channels), str(self.out_channels),
                *_window_repr(*self.window, default_stride=(1, 1))]


class _Pool2D(Layer):
    """Shared hyperparameters and shape rule of the pooling layers (no parameters)."""

    def __init__(self, pool_size=2, stride=None):
        self.pool_size = _check_positive("pool_size", pool_size)
        self.stride = self.pool_size if stride is None else _check_positive("stride", stride)

    @property
    def window(self):
        return self.pool_size, self.stride, (0, 0)

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

    Shape:
        input (N, C, H, W) -> output (N, C, H_out, W_out), with
        H_out = floor((H - kH) / sH) + 1,  W_out = floor((W - kW) / sW) + 1
        (a remainder at the bottom or right is dropped, as in PyTorch).
    """

    def _forward(self, x):
        return F.maxpool2d_forward(x, self.pool_size, self.stride)

    def _infer(self, x):
        return F.maxpool2d(x, self.pool_size, self.stride)

    def _backward(self, dout, cache):
        return F.maxpool2d_backward(dout, cache)


class AvgPool2D(_Pool2D):
    """Average pooling: the mean of each window, channel by channel.

        out[n, c, i, j] = 1 / (kH·kW) · Σ_{m < kH, q < kW} x[n, c, i·sH + m, j·sW + q]

    Args and Shape: as `MaxPool2D`.
    """

    def _forward(self, x):
        return F.avgpool2d_forward(x, self.pool_size, self.stride)

    def _backward(self, dout, cache):
        return F.avgpool2d_backward(dout, cache)


class ReLU(Layer):
    """Rectified linear unit, elementwise: out = max(x, 0); its derivative at 0 is taken as 0.

    Shape: any (N, ...) -> the same shape.
    """

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def _forward(self, x):
        return F.relu_forward(x)

    def _infer(self, x):
        return F.relu(x)

    def _backward(self, dout, cache):
        return F.relu_backward(dout, cache)


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
        init: "he" (default) or "uniform" (PyTorch's default), see `cnnumpy.init`.

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
        return F.linear_forward(x, self.W, self.b)

    def _backward(self, dout, cache, input_grad=True):
        dx, self.dW, self.db = F.linear_backward(dout, cache, input_grad)
        return dx

    def _repr_args(self):
        return [str(self.in_features), str(self.out_features)]
