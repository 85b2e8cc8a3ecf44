"""Recycled memory for the kernels' large arrays.

A training step makes the same large arrays every time: layer outputs, ReLU masks, pooling
indices, column matrices, gradients. Fresh arrays of that size may come from the operating
system as new pages, and the first touch of each new page (a page fault, which also zeroes
it) costs about as much as the work that fills it: when every large array of a SimpleCNN
training step was a fresh mapping, the step took 1.5 times as long. So the kernels take
their large arrays from here:

    out = empty((n, h, w, c), np.float32)    # like np.empty: contents undefined
    dx = empty_like(x)                       # like np.empty_like: x's memory layout

Each array is a view of a block of bytes that this module keeps. When nothing references a
block any more (no array or view made from it is alive: every view holds a reference to the
block, so its reference count is back to what this module holds), a later request of a size
from half the block to the whole block reuses it. An array handed out is never reused while
anything can still read it. Blocks are per thread; at most `MAX_BLOCKS` are kept, and
`release()` lets go of the calling thread's blocks. Arrays under `MIN_BYTES` come from
`np.empty` (the C allocator reuses freed memory of that size without new pages).
"""

from __future__ import annotations

import sys
import threading

import numpy as np

MIN_BYTES = 4 * 2**20
MAX_BLOCKS = 16

_local = threading.local()


def _references(blocks: list[np.ndarray], index: int) -> int:
    return sys.getrefcount(blocks[index])


# What `_references` counts for a block that only the list holds (the interpreter's own
# temporary references included): a block is free when its count is back to this.
_FREE = _references([np.empty(1, dtype=np.uint8)], 0)


def _blocks() -> list[np.ndarray]:
    if not hasattr(_local, "blocks"):
        _local.blocks = []
    return _local.blocks


def _block_for(nbytes: int) -> np.ndarray:
    """The smallest free kept block of nbytes to 2*nbytes bytes, else a new block (kept
    unless `MAX_BLOCKS` are kept and none of them is free)."""
    blocks = _blocks()
    free = [index for index in range(len(blocks)) if _references(blocks, index) == _FREE]
    fitting = [index for index in free if nbytes <= blocks[index].nbytes <= 2 * nbytes]
    if fitting:
        return blocks[min(fitting, key=lambda index: blocks[index].nbytes)]
    block = np.empty(nbytes, dtype=np.uint8)
    if len(blocks) >= MAX_BLOCKS and free:
        del blocks[free[0]]  # forget the oldest free block
    if len(blocks) < MAX_BLOCKS:
        blocks.append(block)
    return block


def empty(shape, dtype) -> np.ndarray:
    """A C-contiguous array of `shape` and `dtype` with undefined contents (see module doc)."""
    dtype = np.dtype(dtype)
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(size) for size in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    return _block_for(nbytes)[:nbytes].view(dtype).reshape(shape)


def empty_like(x: np.ndarray, dtype=None) -> np.ndarray:
    """An array shaped like x with x's memory order (e.g. an NCHW view of channels-last
    memory gets the same), of x's dtype or `dtype`; contents undefined."""
    order = sorted(range(x.ndim), key=lambda axis: -abs(x.strides[axis]))  # outermost first
    stored = empty([x.shape[axis] for axis in order], x.dtype if dtype is None else dtype)
    return stored.transpose(np.argsort(order))


def release() -> None:
    """Let go of the calling thread's kept blocks (arrays still in use stay valid)."""
    _blocks().clear()
