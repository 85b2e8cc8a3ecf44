"""The base classes: `Module` (a tree of modules with parameters and buffers) and `Layer` (a
leaf that validates its input, calls a kernel and keeps one cache). See `cnnumpy.layers`."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .. import trace, workspace
from ..functional.windowing import pair, to_nchw
from ..shapes import conv_output_size


def _shape_error(layer: "Layer", message: str, shape) -> ValueError:
    return ValueError(f"{type(layer).__name__} {message} (input shape {tuple(shape)})")


class Module:
    """Base of layers and models: a tree of modules with parameters, buffers and a train flag.

    A module's children are the `Module` values among its attributes, in the order they were
    set (a container such as `Sequential` names its own); their names make the dotted names
    of everything below them (`layer1.0.conv1.W`). Every module may own

    - parameters, listed in `param_names` (trained: each has a gradient array `d<name>`
      of its shape, which backward overwrites),
    - buffers, listed in `buffer_names`: state that is not trained but is part of the model,
      such as BatchNorm's running statistics; saved in checkpoints, converted by `astype`.

    Composite modules only route arrays between their children (the arithmetic happens in
    leaves, `Add` included), so a recorded forward pass (`cnnumpy.trace`) is the whole
    computation. Call a child as `child(x)`, not `child.forward(x)`: the call is what a trace
    records. (For inference outside a trace, `Sequential` and `Residual` run a Conv2D with the
    BatchNorm2D and ReLU after it as one convolution, and a residual block's sum and ReLU in
    place: then those modules' `forward` is not called, see `models.containers`.)
    """

    training = True
    param_names: tuple[str, ...] = ()
    buffer_names: tuple[str, ...] = ()

    def forward(self, x: np.ndarray, keep_cache: bool = True) -> np.ndarray:
        """The output for a batch x. With keep_cache=False (inference), the layers keep
        nothing for backward, and skip the work that only backward needs (ReLU's mask,
        max-pooling's offsets of the maxima)."""
        raise NotImplementedError

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Gradient for the input of the last forward (None when input_grad is False: only the
        parameter gradients are made, as for the images under a model's first layer)."""
        raise NotImplementedError

    def __call__(self, *inputs: np.ndarray, keep_cache: bool = True) -> np.ndarray:
        recorder = trace.active_recorder()
        if recorder is not None:
            call = recorder.enter(self, inputs)
        # keep_cache is passed only when False: modules written without it still work
        out = self.forward(*inputs) if keep_cache else self.forward(*inputs, keep_cache=False)
        if recorder is not None:
            recorder.exit(call, out)
        return out

    # ------------------------------------------------------------------ the tree

    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        """(name, module) of the direct children, in the order they were set. Modules in a
        list, tuple or dict attribute would be nobody's children (never trained, saved or
        converted): a TypeError says to hold them in a Sequential."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple, dict)) and any(
                    isinstance(item, Module)
                    for item in (value.values() if isinstance(value, dict) else value)):
                raise TypeError(f"{type(self).__name__}.{name} holds modules in a "
                                f"{type(value).__name__}: they would not be trained or saved; "
                                f"hold them in a cnnumpy.Sequential")

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """(dotted name, module) of this module ("" or `prefix`) and everything below it,
        parents before their children."""
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(_join(prefix, name))

    def modules(self) -> Iterator["Module"]:
        return (module for _, module in self.named_modules())

    def named_layers(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """(dotted name, module) of every leaf (a module without children), in the order the
        modules were defined (which is not always the order forward runs them: see
        `cnnumpy.trace` for what a forward pass does)."""
        for name, module in self.named_modules(prefix):
            if next(module.named_children(), None) is None:
                yield name, module

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one output sample for one input sample (no batch axis); checks the shape."""
        raise NotImplementedError

    def receptive_window(self, input_shape) -> tuple | None:
        """(kernel, stride, padding) pairs for the receptive-field recurrence, for one input
        sample of `input_shape`; None for a module that keeps each unit's field (a join of
        paths such as `Add` takes the union of its inputs' fields: see `cnnumpy.shapes`)."""
        return None

    def parameter_places(self) -> Iterator[tuple[str, "Module", str]]:
        """(dotted name, module, key) of every parameter, in the order of `parameters()`: the
        parameter is `getattr(module, key)`, its gradient `getattr(module, "d" + key)`."""
        return self._places("param_names")

    def _places(self, names: str) -> Iterator[tuple[str, "Module", str]]:
        """(dotted name, module, key) of the `param_names` or `buffer_names` of every module."""
        for prefix, module in self.named_modules():
            for key in getattr(module, names):
                yield _join(prefix, key), module, key

    def _named(self, names: str, attribute_prefix: str = "") -> dict[str, np.ndarray]:
        """{dotted name: array} of the `param_names` or `buffer_names` of every module."""
        return {name: getattr(module, attribute_prefix + key)
                for name, module, key in self._places(names)}

    def parameters(self) -> dict[str, np.ndarray]:
        """Every parameter array by dotted name (live: in-place updates change the model)."""
        return self._named("param_names")

    def gradients(self) -> dict[str, np.ndarray]:
        """The gradient of every parameter from the last `backward`, same keys as parameters()
        (live: the next backward overwrites them; copy them to keep a snapshot)."""
        return self._named("param_names", "d")

    def buffers(self) -> dict[str, np.ndarray]:
        """Every buffer (non-trained state, e.g. running statistics) by dotted name, live."""
        return self._named("buffer_names")

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameters and buffers by dotted name: everything a checkpoint stores of the model
        (live arrays: copy them to keep a snapshot)."""
        return {**self.parameters(), **self.buffers()}

    def _gradient(self, key: str) -> np.ndarray:
        """The array that backward writes parameter `key`'s gradient into: `d<key>`, made
        again (zeros) when the parameter was replaced by one of another shape or dtype."""
        param, grad = getattr(self, key), getattr(self, "d" + key, None)
        if grad is None or grad.shape != param.shape or grad.dtype != param.dtype:
            grad = np.zeros_like(param)
            setattr(self, "d" + key, grad)
        return grad

    def zero_grad(self) -> None:
        for grad in self.gradients().values():
            grad[...] = 0

    def load_parameters(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy arrays into the parameters of the same names (shapes must match; cast to dtype)."""
        _copy_into(self.parameters(), arrays, "parameter")

    def load_state_dict(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy arrays into the parameters and buffers of the same names (every name must be
        there and nothing else; shapes must match; values are cast to each array's dtype)."""
        _copy_into(self.state_dict(), arrays, "state")

    def summary(self, input_shape: tuple[int, ...]) -> str:
        """The table of `cnnumpy.summary` (shapes, parameters, MACs, receptive fields) as text."""
        from ..summary import summary_table  # imported here: summary imports this module

        return summary_table(self, input_shape)

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters().values())

    def train(self, mode: bool = True) -> "Module":
        """Set training mode (True) or evaluation mode (False) on this module and below."""
        for module in self.modules():
            module.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def astype(self, dtype) -> "Module":
        """Convert parameters, gradients and floating-point buffers to `dtype` (float32 or
        float64), in place; returns self."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"parameters must be float32 or float64, got {dtype}")
        for module in self.modules():
            module._convert_own(dtype)
        return self

    def _convert_own(self, dtype: np.dtype) -> None:
        """`astype` for this module's own arrays (not its children's)."""
        for key in self.param_names:
            for attr in (key, "d" + key):
                setattr(self, attr, getattr(self, attr).astype(dtype))
        for key in self.buffer_names:
            if np.issubdtype(getattr(self, key).dtype, np.floating):
                setattr(self, key, getattr(self, key).astype(dtype))

    @property
    def dtype(self) -> np.dtype | None:
        """dtype of the parameters (None for a module without parameters)."""
        params = self.parameters()
        return next(iter(params.values())).dtype if params else None


def _copy_into(targets: dict[str, np.ndarray], arrays: dict, what: str) -> None:
    """np.copyto every target from the array of the same name; one error lists every name or
    shape that does not match."""
    if not isinstance(arrays, dict):
        raise TypeError(f"expected a dict of arrays by name, got {type(arrays).__name__}")
    missing = sorted(set(targets) - set(arrays))
    unexpected = sorted(set(arrays) - set(targets))
    shapes = [f"{name}: expected {targets[name].shape}, got {np.shape(arrays[name])}"
              for name in targets if name in arrays and np.shape(arrays[name]) != targets[name].shape]
    if missing or unexpected or shapes:
        problems = [f"missing {missing}" if missing else "", f"unexpected {unexpected}"
                    if unexpected else "", f"wrong shapes ({'; '.join(shapes)})" if shapes else ""]
        raise ValueError(f"{what} names or shapes do not match: "
                         + ", ".join(p for p in problems if p))
    for name, target in targets.items():
        value = np.asarray(arrays[name])
        casting = "same_kind" if np.issubdtype(target.dtype, np.floating) else "unsafe"
        try:
            np.copyto(target, value, casting=casting)
        except TypeError:
            raise TypeError(f"{what} {name} is {target.dtype}, cannot take a {value.dtype} "
                            f"array") from None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class Layer(Module):
    """A leaf layer: validates its input, calls a kernel, keeps the cache for backward.

    Subclasses set `param_names` and implement `output_shape`, `_forward(x) -> (out, cache)`
    and `_backward(dout, cache) -> dx`, which writes the parameter gradients into the layer's
    `d<name>` arrays (`_gradient(name)`), in place: they stay the same arrays from step to
    step, which a distributed run's flat buffer of gradients relies on (a layer that assigns
    new arrays still trains, one copy slower, see `cnnumpy.distributed.FlatParameters`); a
    layer with parameters also takes `input_grad=False`, to store them without making dx
    (returns None).
    `_infer(x) -> out` is the forward pass without a cache (by default `_forward`'s output).

    Inputs held by a cache: a cache never refers to the caller's input array. A layer whose
    backward needs its input (a convolution, Linear, BatchNorm in evaluation mode and with
    the fused loops in training) keeps a copy (`_held`), so that changing x in place between forward and backward cannot change
    the gradients. Inside a model there is no caller to fear: an array that one module made
    and a container hands to the next (`workspace.handing_over`) is held as it is, without
    the copy's pass over it and its memory. (A module of your own inside a model must then
    not change its input in place, as none of cnnumpy's does in training.)
    """

    cache = None
    # (kernel, stride, padding) pairs of a windowed layer, for receptive fields; None otherwise.
    window = None

    def receptive_window(self, input_shape) -> tuple | None:
        """`window` (see `Module.receptive_window`); layers whose window depends on the input
        size, such as adaptive pooling, override this."""
        return self.window

    def forward(self, x: np.ndarray, keep_cache: bool = True) -> np.ndarray:
        self._check_input(x)
        self.cache = None  # the last step's cache is dead: free it before making the next one
        if not keep_cache:
            return self._infer(x)
        out, cache = self._forward(x)
        self.cache = (x.shape, x.dtype, cache)
        return out

    def _check_input(self, x) -> None:
        """A clear error for an input this layer cannot take (type, dtype, shape)."""
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

    @staticmethod
    def _held(x: np.ndarray, channels_last: bool = False) -> np.ndarray:
        """x for a cache to hold: x itself when a container hands it over
        (`workspace.handed_over`), else a copy, in x's memory layout or with
        channels_last=True (images) as an NCHW view of channels-last memory, the layout the
        convolution kernels read (as every kernel's output is)."""
        if workspace.handed_over(x):
            return x
        if channels_last and x.ndim == 4:
            n, c, h, w = x.shape
            copied = to_nchw(workspace.empty((n, h, w, c), x.dtype))
        else:
            copied = workspace.empty_like(x)
        np.copyto(copied, x)
        return copied

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
