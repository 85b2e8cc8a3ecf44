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
from 1/`FIT` of the block to the whole block reuses it (the smallest such block). An array
handed out is never reused while anything can still read it (reference counts are
CPython's: elsewhere nothing is reused). Blocks are per thread; `release()` lets go of the
calling thread's blocks.

Which blocks are kept. A step asks for the same sizes in the same order every time, so the
blocks it needs are kept as long as they fit within `MAX_BYTES`; when a new block would not,
free blocks that no request has taken for more than `STALE` requests (counting every request
for a block, served or not) make room, the least recently taken first, and if that is not
enough the new block is used once and not kept. So a loop of requests that comes back to each
block within `STALE` requests keeps what fits of it (a training step of 64 images makes 281
requests in ResNet-20, 773 in ResNet-56, 1,521 in ResNet-110), and what a loop no longer asks
for makes room for what it does. Forgetting the oldest free block whenever a new one needs
room, as cnnumpy did with a fixed count of 16 blocks, forgets in a loop larger than what is
kept just the block the loop asks for next: a ResNet-20 part of 64 images takes 59 blocks (141
MiB) a training step. With arrays from 1 MiB (57 blocks), 16 kept met 7,300-8,800 page faults a
step; all kept, no request needed a new block, and a step of 128 images over two processes took
351 ms instead of 446 in a noisy hour, 325 instead of 347 in a quiet one
(`benchmarks/step_between_versions.py`). A ResNet-56 part of 64 keeps 131 blocks (309 MiB). The
memory kept stays at the most a loop has used, up to `MAX_BYTES` a thread, until `release()`,
as PyTorch's caching allocator keeps a GPU's. `FIT` bounds the bytes a block may waste on a
smaller request; both ways it costs memory: a block taken by a much smaller request is not
there for the next large one, and a block kept for each narrow band of sizes is one more
(ResNet-20's two-process training step peaked at 324 MiB with `FIT` 2, 300 with 1.5, 311 with
1.25).

Arrays under `MIN_BYTES` come from `np.empty`: glibc's allocator, for one, serves such sizes
from memory it already holds once it has seen them freed (its threshold for fresh mappings
grows with the blocks freed). Not reliably from half a MiB up: with `MIN_BYTES` at 4 MiB,
ResNet-20's inference (64 images, one thread) met 2,400 page faults a pass (im2col's columns
of the stride-2 convolutions, kernel-row matrices of 2 MiB), with 1 MiB none; its training
step on 1x28x28 images (the last stage's arrays 0.8 MiB) met 1,200-1,300 with 1 MiB and 1
with 512 KiB, and a step of 128 images over two processes took 268 ms instead of 291.

Since an array from here is never written over while it is alive, an array a kernel made
during a forward pass (`made_here`) can be held by a layer's cache as it is, when a container
says that nobody outside the model has seen it (`handing_over`, see `cnnumpy.layers.Layer`).
"""

from __future__ import annotations

import sys
import threading
from bisect import bisect_left, bisect_right
from contextlib import contextmanager

import numpy as np

MIN_BYTES = 2**19
MAX_BYTES = 512 * 2**20  # kept per thread
FIT = 1.5  # a block serves requests from 1/FIT of its bytes up
STALE = 4096  # requests a block goes untaken before it may be forgotten

_local = threading.local()


def _references(blocks: list[np.ndarray], index: int) -> int:
    return sys.getrefcount(blocks[index])


# What `_references` counts for a block that only the list holds (the interpreter's own
# temporary references included): a block is free when its count is back to this.
_FREE = _references([np.empty(1, dtype=np.uint8)], 0)
_RECYCLES = sys.implementation.name == "cpython"


def _state():
    if not hasattr(_local, "blocks"):
        _local.blocks = []  # the kept blocks, smallest first
        _local.sizes = []  # their sizes in bytes
        _local.taken = []  # for each, the count of requests when it was last taken
        _local.requests = 0
    return _local


def _blocks() -> list[np.ndarray]:
    return _state().blocks


def _block_for(nbytes: int) -> np.ndarray:
    """The smallest free kept block of nbytes to FIT*nbytes bytes, else a new block, kept if
    it fits within `MAX_BYTES`, after forgetting stale free blocks if need be (module doc)."""
    state = _state()
    blocks, sizes, taken = state.blocks, state.sizes, state.taken
    state.requests += 1
    # (indices, not a loop over the blocks: a variable holding one counts as a reference)
    for index in range(bisect_left(sizes, nbytes), bisect_right(sizes, FIT * nbytes)):
        if _references(blocks, index) == _FREE:
            taken[index] = state.requests
            return blocks[index]
    block = np.empty(nbytes, dtype=np.uint8)
    kept = sum(sizes)
    stale = sorted((index for index in range(len(blocks)) if state.requests - taken[index] > STALE
                    and _references(blocks, index) == _FREE), key=lambda index: taken[index])
    forget = []
    for index in stale:
        if kept + nbytes <= MAX_BYTES:
            break
        forget.append(index)
        kept -= sizes[index]
    if kept + nbytes > MAX_BYTES:
        return block  # used once: forgetting the blocks a loop still takes would not help
    for index in sorted(forget, reverse=True):
        del blocks[index], sizes[index], taken[index]
    index = bisect_right(sizes, nbytes)
    blocks.insert(index, block)
    sizes.insert(index, nbytes)
    taken.insert(index, state.requests)
    return block


def empty(shape, dtype) -> np.ndarray:
    """A C-contiguous array of `shape` and `dtype` with undefined contents (see module doc)."""
    dtype = np.dtype(dtype)
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(size) for size in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < MIN_BYTES or not _RECYCLES:
        return np.empty(shape, dtype=dtype)
    return _block_for(nbytes)[:nbytes].view(dtype).reshape(shape)


def memory_order(x: np.ndarray) -> list[int]:
    """x's axes from the outermost in memory (the largest stride) to the innermost: (0, 2, 3,
    1) for an NCHW view of channels-last memory."""
    return sorted(range(x.ndim), key=lambda axis: -abs(x.strides[axis]))


def empty_like(x: np.ndarray, dtype=None) -> np.ndarray:
    """An array shaped like x with x's memory order (e.g. an NCHW view of channels-last
    memory gets the same), of x's dtype or `dtype`; contents undefined."""
    order = memory_order(x)
    stored = empty([x.shape[axis] for axis in order], x.dtype if dtype is None else dtype)
    return stored.transpose(np.argsort(order))


def release() -> None:
    """Let go of the calling thread's kept blocks (arrays still in use stay valid)."""
    state = _state()
    for kept in (state.blocks, state.sizes, state.taken):
        kept.clear()


def made_here(x) -> bool:
    """Whether x is (a view of) a block of the calling thread kept here: an array that a kernel
    asked for, which nothing will write over while x is alive."""
    root = x
    while isinstance(root, np.ndarray) and isinstance(root.base, np.ndarray):
        root = root.base
    return any(root is block for block in _blocks())


# Handing over: a layer whose backward needs its input keeps a copy of it, unless the input
# is an array that only this forward pass has seen. A container knows when it is: the output
# of one of its modules (made by a kernel, `made_here`), given to the next, with no trace
# recording (a trace shows every array to its reader).

@contextmanager
def handing_over(x):
    """Inside the block, `handed_over(x)` is true: x (or None, for nothing) was made during
    this forward pass, nothing outside the model holds it, and no module changes it in place
    while a cache may hold it (what a training pass of cnnumpy's own modules keeps to)."""
    previous = getattr(_local, "handed", None)
    _local.handed = x
    try:
        yield
    finally:
        _local.handed = previous


def handed_over(x) -> bool:
    """Whether x is the array a container is handing over (`handing_over`)."""
    return x is not None and x is getattr(_local, "handed", None)
