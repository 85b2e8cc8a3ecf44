"""What the models of the zoo share: checked arguments, a config for checkpoints, and an
error that names the smallest input a model takes."""

from __future__ import annotations

import operator

import numpy as np

from ..layers import ZeroPad2D
from .containers import Sequential


def check_model_arguments(input_shape, num_classes) -> tuple[tuple[int, int, int], int]:
    """(C, H, W) and num_classes as ints, or a ValueError naming the bad argument."""
    try:
        shape = tuple(operator.index(v) for v in input_shape)
    except TypeError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1 or any(isinstance(v, bool) for v in input_shape):
        raise ValueError(f"input_shape must be (C, H, W) positive integers, got {input_shape!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return shape, int(num_classes)


class ZooModel(Sequential):
    """A Sequential with the arguments it was built from: `config()` returns them, with the
    registry name, so that a checkpoint rebuilds the same architecture (depth and width too).
    Subclasses call `_finish(name, arguments)` after building their layers."""

    @staticmethod
    def _padded(modules: dict, input_padding) -> dict:
        """`modules` after a ZeroPad2D named "pad" when input_padding > 0 (no parameter
        names change: torchvision's names stay)."""
        if isinstance(input_padding, bool) or not isinstance(input_padding, int) \
                or input_padding < 0:
            raise ValueError(f"input_padding must be an integer >= 0, got {input_padding!r}")
        return {"pad": ZeroPad2D(input_padding), **modules} if input_padding else modules

    def _finish(self, name: str, arguments: dict) -> None:
        self.input_shape = tuple(arguments["input_shape"])
        self.num_classes = int(arguments["num_classes"])
        self._config = {"name": name, **{k: list(v) if isinstance(v, tuple) else v
                                         for k, v in arguments.items()}}
        try:
            self.output_shape(self.input_shape)
        except ValueError:
            c, h, w = self.input_shape
            smallest = next((size for size in range(1, 1025) if _fits(self, (c, size, size))),
                            None)
            need = f"at least {smallest}x{smallest}" if smallest else "larger"
            raise ValueError(f"{name} needs images of {need} pixels, got input_shape "
                             f"{self.input_shape}") from None

    def config(self) -> dict:
        """The architecture's constructor arguments, JSON-ready (for checkpoints)."""
        return dict(self._config)


def _fits(model, shape) -> bool:
    try:
        model.output_shape(shape)
    except ValueError:
        return False
    return True
