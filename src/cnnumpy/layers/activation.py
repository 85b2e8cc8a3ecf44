"""Elementwise layers: ReLU and Dropout."""

from __future__ import annotations

import numpy as np

from .. import functional as F
from .module import Layer


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

    def infer_in_place(self, x: np.ndarray) -> np.ndarray:
        """max(x, 0) written over x and returned, for inference (no cache) where x is an
        array that nothing else holds."""
        self._check_input(x)
        self.cache = None
        return F.relu(x, out=x)

    def _backward(self, dout, cache):
        return F.relu_backward(dout, cache)


_MASK64 = (1 << 64) - 1


def _generator_state(state: np.ndarray) -> np.random.PCG64:
    """A PCG64 bit generator at the state stored in a (4,) uint64 array (see Dropout)."""
    hi_state, lo_state, hi_inc, lo_inc = (int(v) for v in state)
    bit_generator = np.random.PCG64()
    bit_generator.state = {"bit_generator": "PCG64", "has_uint32": 0, "uinteger": 0,
                           "state": {"state": hi_state << 64 | lo_state,
                                     "inc": hi_inc << 64 | lo_inc}}
    return bit_generator


def _state_array(bit_generator: np.random.PCG64) -> np.ndarray:
    state = bit_generator.state["state"]
    return np.array([state["state"] >> 64, state["state"] & _MASK64,
                     state["inc"] >> 64, state["inc"] & _MASK64], dtype=np.uint64)


class Dropout(Layer):
    """Inverted dropout: in training, each value is kept with probability 1 - p and scaled by
    1 / (1 - p), else zeroed; in evaluation, the identity.

        out = x · mask,   mask = [u >= p] / (1 - p),   u ~ U[0, 1) per value

    The draws u come from the layer's own random stream, stored as the buffer `rng_state`
    (PCG64's 128-bit state and increment as four uint64 words): checkpoints keep it, so a
    resumed run draws the masks an uninterrupted run would. `seed(rng)` restarts the stream
    from a Generator (the training loop does, from its seed). Each value takes one 64-bit draw,
    sample after sample, so a part of a split batch (`batch_split`, see `cnnumpy.parallel`)
    skips to its first sample and draws exactly its slice of the whole batch's mask: a batch
    split over threads or processes is dropped out as it would be whole.

    Args:
        p: probability of zeroing a value, in [0, 1) (default 0.5).
        rng: Generator that seeds the stream (default: a fresh one).

    Shape: any (N, ...) -> the same shape.
    """

    buffer_names = ("rng_state",)
    batch_split = None

    def __init__(self, p: float = 0.5, *, rng: np.random.Generator | None = None):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(f"p must be a probability in [0, 1), got {p!r}")
        self.p = float(p)
        self.seed(np.random.default_rng() if rng is None else rng)

    def seed(self, rng: np.random.Generator) -> None:
        """Start the stream of masks from one draw of `rng`."""
        self.rng_state = _state_array(np.random.PCG64(int(rng.integers(2**63))))

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def _uniform(self, x) -> np.ndarray:
        """This batch's draws, and the stream moved past the whole batch's."""
        per_sample = x[0].size
        start, total = ((0, len(x)) if self.batch_split is None
                        else (self.batch_split.start, self.batch_split.total))
        bit_generator = _generator_state(self.rng_state)
        bit_generator.advance(start * per_sample)
        uniform = np.random.Generator(bit_generator).random(x.shape)  # one draw per value
        bit_generator.advance((total - start - len(x)) * per_sample)
        self.rng_state[...] = _state_array(bit_generator)
        return uniform

    def _forward(self, x):
        if not self.training or self.p == 0:
            return x, None
        return F.dropout_forward(x, F.dropout_mask(self._uniform(x), self.p, x.dtype))

    def _backward(self, dout, mask):
        return dout if mask is None else F.dropout_backward(dout, mask)

    def _repr_args(self):
        return [] if self.p == 0.5 else [f"p={self.p}"]


def seed_dropout(model, rng: np.random.Generator) -> None:
    """Restart the stream of every Dropout of `model` from `rng`, in the order of the modules
    (the training loop does at the start of a run, so that its seed fixes the masks)."""
    for module in model.modules():
        if isinstance(module, Dropout):
            module.seed(rng)
