"""Containers: `Sequential` (modules one after the other) and `Residual` (a main path plus a
shortcut, added)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from .. import trace, workspace
from ..layers import Add, BatchNorm2D, Conv2D, Identity, MaxPool2D, Module, ReLU


_inside = threading.local()  # how many Sequential.forward calls this thread is inside


def check_finite_input(x) -> None:
    """ValueError if a floating-point input holds NaN or infinite values (one pass over it)."""
    if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise ValueError(f"input contains NaN or infinite values (shape {x.shape})")


@contextmanager
def input_checked():
    """Inside the block, Sequential.forward takes its input as already checked (a part of a
    batch that `cnnumpy.parallel.BatchParallel` checked whole)."""
    _inside.depth = getattr(_inside, "depth", 0) + 1
    try:
        yield
    finally:
        _inside.depth -= 1


def run_in_order(modules: list[Module], x: np.ndarray, keep_cache: bool) -> np.ndarray:
    """x through `modules` one after the other. For inference (keep_cache=False) outside a
    recorded trace, a Conv2D runs as one convolution with what follows it (`_fused_with`: a
    BatchNorm2D folded into its weights, then a ReLU, with any Identity before or between
    them; `Conv2D.infer_fused`), the same outputs up to float rounding with fewer passes
    over them. The modules taken in are not called (a wrapper around their `forward` does
    not see them); their caches are cleared, as their own forward would. A trace sees every
    module run as written."""
    fuse = not keep_cache and trace.active_recorder() is None
    first, first_handed = x, workspace.handed_over(x)
    i = 0
    while i < len(modules):
        module = modules[i]
        taken = _fused_with(module, modules[i + 1 :], x) if fuse else []
        if taken:
            for joined in taken:
                joined.cache = None
            kinds = {type(joined): joined for joined in taken}
            x = module.infer_fused(x, kinds.get(BatchNorm2D), relu=ReLU in kinds)
        else:
            with workspace.handing_over(x if _hands_over(x, first, first_handed) else None):
                x = module(x, keep_cache=keep_cache)
        i += 1 + len(taken)
    return x


def _hands_over(x, first: np.ndarray, first_handed: bool) -> bool:
    """Whether `run_in_order` hands x over to the module it gives x to (`workspace.
    handing_over`: a cache may hold x without a copy). Only an array a kernel made
    (`workspace.made_here`), and only while no trace records; and then either x is not the
    sequence's input `first` nor a view of it (an Identity or Flatten passes those on), or
    `first` was itself handed over to the sequence."""
    return (trace.active_recorder() is None and workspace.made_here(x)
            and (first_handed or not np.may_share_memory(x, first)))


def _fused_with(module: Module, following: list[Module], x) -> list[Module]:
    """The modules after `module` that inference runs inside it, when it is a Conv2D: a
    BatchNorm2D it can fold (in evaluation mode, of its output channels and dtype, where
    `Conv2D.folding_pays`), then a ReLU, and any Identity before or between them (what
    `fold_batchnorm` leaves of a BatchNorm); [] for none."""
    if type(module) is not Conv2D:
        return []
    taken = []

    def take(kind, fits=lambda found: True) -> None:
        while len(taken) < len(following) and type(following[len(taken)]) is Identity:
            taken.append(following[len(taken)])
        found = following[len(taken)] if len(taken) < len(following) else None
        if type(found) is kind and fits(found):
            taken.append(found)

    take(BatchNorm2D, lambda bn: not bn.training and bn.num_features == module.out_channels
         and bn.dtype == module.dtype and module.folding_pays(x))
    take(ReLU)
    while taken and type(taken[-1]) is Identity:  # none after the last one taken in
        taken.pop()
    return taken


def _fresh(out, main: list[Module], x: np.ndarray, short: np.ndarray) -> bool:
    """Whether `out`, what the modules `main` returned, is a new array that nothing else
    holds: the output of a convolution or BatchNorm (those make one) after any Identity,
    sharing no memory with the block's input or shortcut."""
    last = next((module for module in reversed(main) if type(module) is not Identity), None)
    return (type(last) in (Conv2D, BatchNorm2D) and isinstance(out, np.ndarray)
            and out.flags.writeable and not np.may_share_memory(out, x)
            and not np.may_share_memory(out, short))


class Sequential(Module):
    """Layers applied one after the other; backward runs them in reverse.

    ReLU then max-pooling runs as max-pooling then ReLU: the two commute,
    max(relu(x)) = relu(max(x)), since ReLU never changes the order of two values, and so do
    their gradients (each window's gradient goes to its first maximum, and ReLU lets it through
    exactly where that maximum is positive). Pooling first, ReLU and its backward work on a
    quarter of the values (2x2 windows). Outputs and gradients are exactly those of the
    written order as long as the activations hold no NaN (a window [5, NaN] passes its
    gradient to the 5 when ReLU comes first, to nobody when pooling does: NaN > 0 is false);
    only the caches each of the two layers keeps differ. Set `commute_relu_pool = False` to
    run the layers as written. For inference, a Conv2D runs as one convolution with the
    BatchNorm2D (in evaluation mode) and ReLU that follow it (`run_in_order`).

    Args:
        layers: a list of modules (named "0", "1", ...) or a dict of name -> module.
            The names make the parameter names: `{"conv1": Conv2D(...)}` owns `conv1.W`.
            `model["conv1"]` is a layer by name, `model[0]` (or `model[-1]`) by position.

    Shape: whatever its layers make of it; `output_shape(input_shape)` folds their rules.
    """

    commute_relu_pool = True

    def __init__(self, layers):
        if isinstance(layers, dict):
            named = dict(layers)
        else:
            named = {str(i): layer for i, layer in enumerate(layers)}
        for name, layer in named.items():
            if not isinstance(layer, Module):
                raise TypeError(f"layer {name!r} is not a cnnumpy module: {layer!r}")
            if not name or "." in name:
                raise ValueError(f"layer names must be non-empty and contain no '.', got {name!r}")
        self.layers = named
        self._executed: list[Module] = []  # the order of the last forward, for backward

    def execution_order(self) -> list[tuple[str, Module]]:
        """(name, layer) in the order forward runs them: each ReLU directly followed by a
        MaxPool2D swapped with it (see the class doc), except while a trace records."""
        order = list(self.layers.items())
        if self.commute_relu_pool and trace.active_recorder() is None:
            for i in range(len(order) - 1):
                if type(order[i][1]) is ReLU and type(order[i + 1][1]) is MaxPool2D:
                    order[i], order[i + 1] = order[i + 1], order[i]
        return order

    def __getitem__(self, key: str | int) -> Module:
        """The layer named `key`, or at position `key` (an int, negative from the end)."""
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            names = list(self.layers)
            if not -len(names) <= key < len(names):
                raise IndexError(f"layer {key} of a Sequential of {len(names)} layers")
            return self.layers[names[key]]
        if key not in self.layers:
            raise KeyError(f"no layer named {key!r}; the layers are {', '.join(self.layers)}")
        return self.layers[key]

    def __len__(self) -> int:
        return len(self.layers)

    def named_children(self) -> Iterator[tuple[str, Module]]:
        yield from self.layers.items()

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.layers.values():
            shape = layer.output_shape(shape)
        return shape

    def forward(self, x: np.ndarray, keep_cache: bool = True) -> np.ndarray:
        """Run every layer in order: (N, *input_shape) -> (N, *output_shape).

        keep_cache=False: inference, nothing kept for backward (see `Module.forward`)."""
        if getattr(_inside, "depth", 0) == 0:  # the model's input: checked once, at the top
            check_finite_input(x)
        self._executed = [layer for _, layer in self.execution_order()]
        _inside.depth = getattr(_inside, "depth", 0) + 1
        try:
            return run_in_order(self._executed, x, keep_cache)
        finally:
            _inside.depth -= 1

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        """Run every layer's backward in reverse order; returns the gradient for the input.

        With input_grad=False the first layer makes only its parameter gradients and None is
        returned: training does not need the gradient of the images (for conv1, its
        col2im is skipped).
        """
        # Before any forward, the written order: its last layer then says what is missing.
        layers = self._executed or list(self.layers.values())
        for depth, layer in enumerate(reversed(layers), start=1):
            dout = layer.backward(dout, input_grad=input_grad or depth < len(layers))
        return dout if input_grad else None

    def __repr__(self) -> str:
        lines = [f"  ({name}): {layer!r}" for name, layer in self.layers.items()]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


class Residual(Module):
    """A residual block: out = activation(main(x) + shortcut(x)) (He et al. 2016).

    The main path is a sequence of modules, named as its own children (so that a ResNet's
    names are torchvision's: `layer1.0.conv1`, `layer1.0.bn1`, ...). The shortcut is the
    identity, or a module named `downsample` (a 1x1 convolution and BatchNorm where the shape
    changes); an `Add` named `add` joins the two, then `activation` (named `relu`; None for
    none). Backward sends the gradient of the sum down both paths and adds the two input
    gradients, the exact derivative of the sum. Both paths run by `run_in_order` (for
    inference, each convolution with its BatchNorm and ReLU); for inference the sum and the
    ReLU are then taken in place over the main path's new output (`_fresh`).

    Args:
        main: dict of name -> module, run in order.
        shortcut: a module of the same output shape as the main path, or None (identity).
        activation: a module applied to the sum: "relu" (default, a new ReLU), a module, or
            None (the sum itself).

    Shape: input (N, C, H, W) -> the main path's output shape (which the shortcut's must match).
    """

    def __init__(self, main: dict, shortcut: Module | None = None,
                 activation: Module | None | str = "relu"):
        if not isinstance(main, dict) or not main:
            raise TypeError(f"main must be a non-empty dict of name -> module, got {main!r}")
        reserved = {"downsample", "add", "relu"} & set(main)
        if reserved:
            raise ValueError(f"main path names {sorted(reserved)} are reserved for the block")
        for name, module in main.items():
            if not isinstance(module, Module):
                raise TypeError(f"module {name!r} is not a cnnumpy module: {module!r}")
            if not (isinstance(name, str) and name.isidentifier()) or hasattr(Residual, name):
                raise ValueError(f"main path names must be identifiers that are not attributes "
                                 f"of a Residual (such as 'forward' or 'train'), got {name!r}")
            setattr(self, name, module)
        if shortcut is not None and not isinstance(shortcut, Module):
            raise TypeError(f"shortcut must be a cnnumpy module or None (the identity), got "
                            f"{shortcut!r}")
        self._main = list(main)
        self.downsample = shortcut
        self.add = Add()
        self.relu = ReLU() if activation == "relu" else activation
        if self.relu is not None and not isinstance(self.relu, Module):
            raise TypeError(f"activation must be a cnnumpy module, 'relu' or None, got "
                            f"{activation!r}")

    @property
    def main_path(self) -> list[tuple[str, Module]]:
        """(name, module) of the main path, in the order it runs."""
        return [(name, getattr(self, name)) for name in self._main]

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for name in self._main:
            shape = getattr(self, name).output_shape(shape)
        short = tuple(input_shape) if self.downsample is None else \
            self.downsample.output_shape(input_shape)
        if short != shape:
            raise ValueError(f"the shortcut gives shape {short} but the main path {shape}")
        return shape

    def forward(self, x: np.ndarray, keep_cache: bool = True) -> np.ndarray:
        main = [getattr(self, name) for name in self._main]
        out = run_in_order(main, x, keep_cache)
        # x is still handed over here if it was to the block, for the downsample's cache too
        short = x if self.downsample is None else self.downsample(x, keep_cache=keep_cache)
        if keep_cache or trace.active_recorder() is not None or not _fresh(out, main, x, short):
            out = self.add(out, short, keep_cache=keep_cache)
            return out if self.relu is None else self.relu(out, keep_cache=keep_cache)
        # inference: the sum, then ReLU, over the main path's new output in place
        out = self.add.add_into(out, short)
        if type(self.relu) is ReLU:
            return self.relu.infer_in_place(out)
        return out if self.relu is None else self.relu(out, keep_cache=False)

    def backward(self, dout: np.ndarray, input_grad: bool = True) -> np.ndarray | None:
        if self.relu is not None:
            dout = self.relu.backward(dout)
        dmain, dshort = self.add.backward(dout)
        for depth, name in enumerate(reversed(self._main), start=1):
            dmain = getattr(self, name).backward(
                dmain, input_grad=input_grad or depth < len(self._main))
        if self.downsample is not None:
            dshort = self.downsample.backward(dshort, input_grad=input_grad)
        return np.add(dmain, dshort, out=workspace.empty_like(dmain)) if input_grad else None

    def __repr__(self) -> str:
        lines = [f"  ({name}): {module!r}" for name, module in self.named_children()]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"
