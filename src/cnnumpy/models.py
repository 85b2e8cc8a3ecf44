"""Models: `Sequential` stacks of layers and the lesson's `SimpleCNN` classifier."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .layers import Conv2D, Flatten, Layer, Linear, MaxPool2D, Module, ReLU, _join


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
    run the layers as written.

    Args:
        layers: a list of modules (named "0", "1", ...) or a dict of name -> module.
            The names make the parameter names: `{"conv1": Conv2D(...)}` owns `conv1.W`.

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
        MaxPool2D swapped with it (see the class doc)."""
        order = list(self.layers.items())
        if self.commute_relu_pool:
            for i in range(len(order) - 1):
                if type(order[i][1]) is ReLU and type(order[i + 1][1]) is MaxPool2D:
                    order[i], order[i + 1] = order[i + 1], order[i]
        return order

    def __getitem__(self, name: str) -> Module:
        return self.layers[name]

    def __len__(self) -> int:
        return len(self.layers)

    def named_layers(self, prefix: str = "") -> Iterator[tuple[str, Layer]]:
        for name, layer in self.layers.items():
            yield from layer.named_layers(_join(prefix, name))

    def output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.layers.values():
            shape = layer.output_shape(shape)
        return shape

    def forward(self, x: np.ndarray, keep_cache: bool = True) -> np.ndarray:
        """Run every layer in order: (N, *input_shape) -> (N, *output_shape).

        keep_cache=False: inference, nothing kept for backward (see `Module.forward`)."""
        if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating):
            if not np.isfinite(x).all():
                raise ValueError(f"input contains NaN or infinite values (shape {x.shape})")
        self._executed = [layer for _, layer in self.execution_order()]
        for layer in self._executed:
            x = layer.forward(x) if keep_cache else layer.forward(x, keep_cache=False)
        return x

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


class SimpleCNN(Sequential):
    """The lesson's classifier: Conv-ReLU-Pool-Conv-ReLU-Pool-Flatten-FC-ReLU-FC.

        conv1  Conv2D(C, 32, 3, padding=1)     pool1  MaxPool2D(2)
        conv2  Conv2D(32, 64, 3, padding=1)    pool2  MaxPool2D(2)
        fc1    Linear(64·⌊⌊H/2⌋/2⌋·⌊⌊W/2⌋/2⌋, 512)    fc2  Linear(512, num_classes)

    with a ReLU after conv1, conv2 and fc1. The flatten size is computed from `input_shape`.

    Args:
        input_shape: (C, H, W) of one image, H and W at least 4 (default (3, 32, 32)).
        num_classes: number of output logits (default 10).
        rng: `numpy.random.Generator` for the initial weights (default: a fresh one).
        dtype: float32 (default) or float64.
        init: initialisation of every layer, "he" (default, the lesson's) or "uniform"
            (PyTorch's default), see `cnnumpy.init`.

    Shape:
        input (N, C, H, W) -> logits (N, num_classes).
    """

    def __init__(self, input_shape=(3, 32, 32), num_classes: int = 10, *,
                 rng: np.random.Generator | None = None, dtype=np.float32, init: str = "he"):
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or not all(
            isinstance(v, (int, np.integer)) and v >= 1 for v in input_shape
        ):
            raise ValueError(f"input_shape must be (C, H, W) positive integers, got {input_shape!r}")
        if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        rng = np.random.default_rng() if rng is None else rng
        channels, height, width = input_shape
        features = Sequential({
            "conv1": Conv2D(channels, 32, 3, padding=1, rng=rng, dtype=dtype, init=init),
            "relu1": ReLU(),
            "pool1": MaxPool2D(2),
            "conv2": Conv2D(32, 64, 3, padding=1, rng=rng, dtype=dtype, init=init),
            "relu2": ReLU(),
            "pool2": MaxPool2D(2),
            "flatten": Flatten(),
        })
        try:
            (flat_size,) = features.output_shape(input_shape)
        except ValueError:
            raise ValueError(
                f"SimpleCNN needs images of at least 4x4 pixels, got input_shape {input_shape}"
            ) from None
        super().__init__({
            **features.layers,
            "fc1": Linear(flat_size, 512, rng=rng, dtype=dtype, init=init),
            "relu3": ReLU(),
            "fc2": Linear(512, num_classes, rng=rng, dtype=dtype, init=init),
        })
        self.input_shape = tuple(int(v) for v in input_shape)
        self.num_classes = int(num_classes)

    def config(self) -> dict:
        """The architecture's constructor arguments, JSON-ready (for checkpoints); not `init`,
        which only draws the first weights."""
        return {"name": "SimpleCNN", "input_shape": list(self.input_shape),
                "num_classes": self.num_classes}
