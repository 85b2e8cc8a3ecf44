"""Add: the sum of two arrays, where a residual block joins its two paths."""

from __future__ import annotations

import numpy as np

from .. import workspace
from .module import Module


class Add(Module):
    """out = a + b, elementwise; backward gives dout to both inputs.

    A leaf with two inputs: `Add()(a, b)`. Residual blocks join their main path and their
    shortcut with one, so that the join is a module a trace records (the receptive field of
    the sum is the union of the two paths' fields).

    Shape: two inputs of one shape (N, ...) -> that shape.
    """

    cache = None

    def forward(self, a: np.ndarray, b: np.ndarray, keep_cache: bool = True) -> np.ndarray:
        self._check_inputs(a, b)
        self.cache = a.shape if keep_cache else None
        return np.add(a, b, out=workspace.empty_like(a))

    def add_into(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a + b written over a and returned, for inference (no cache) where a is an array
        that nothing else holds, such as a residual block's freshly computed main path: one
        pass where a new array takes a pass and fresh memory."""
        self._check_inputs(a, b)
        self.cache = None
        return np.add(a, b, out=a)

    @staticmethod
    def _check_inputs(a, b) -> None:
        for x in (a, b):
            if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
                raise TypeError(f"Add expects two floating-point NumPy arrays, got "
                                f"{getattr(x, 'dtype', type(x).__name__)}")
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"Add expects two arrays of one shape and dtype, got {a.shape} "
                             f"{a.dtype} and {b.shape} {b.dtype}")

    def backward(self, dout: np.ndarray, input_grad: bool = True):
        """(da, db) = (dout, dout): the same array twice, not to be changed in place."""
        if self.cache is None:
            raise RuntimeError("Add.backward called before forward (or after a forward with "
                               "keep_cache=False)")
        if not isinstance(dout, np.ndarray) or dout.shape != self.cache:
            raise ValueError(f"Add.backward expected a gradient of shape {self.cache}, got "
                             f"{getattr(dout, 'shape', type(dout).__name__)}")
        return dout, dout

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def __repr__(self) -> str:
        return "Add()"
