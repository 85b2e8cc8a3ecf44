"""Recycled memory (cnnumpy.workspace): reuse only what nothing references, and kernels whose
earlier results stay intact when their memory could have been recycled."""

import numpy as np
import pytest

from cnnumpy import functional as F
from cnnumpy import workspace

LARGE = workspace.MIN_BYTES // 4  # float32 elements of the smallest recycled array


@pytest.fixture(autouse=True)
def fresh_workspace():
    workspace.release()
    yield
    workspace.release()


def address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_empty_has_the_shape_dtype_and_layout_asked_for():
    a = workspace.empty((4, LARGE // 4), np.float32)
    assert a.shape == (4, LARGE // 4) and a.dtype == np.float32 and a.flags.c_contiguous
    small = workspace.empty(10, np.float64)
    assert small.shape == (10,) and small.dtype == np.float64


def test_memory_is_reused_once_nothing_references_it():
    first = workspace.empty(LARGE, np.float32)
    where = address(first)
    del first
    again = workspace.empty(LARGE, np.float32)
    assert address(again) == where


@pytest.mark.parametrize("holder", ["array", "view", "transpose", "reshape"])
def test_memory_held_by_an_array_or_any_view_is_not_reused(holder):
    first = workspace.empty((2, LARGE // 2), np.float32)
    first[...] = 7
    kept = {"array": lambda: first, "view": lambda: first[1, ::3], "transpose": lambda: first.T,
            "reshape": lambda: first.reshape(-1)}[holder]()
    del first
    second = workspace.empty((2, LARGE // 2), np.float32)
    second[...] = -1
    assert not np.shares_memory(kept, second)
    assert np.all(kept == 7)


def test_a_block_serves_sizes_from_half_to_all_of_it():
    first = workspace.empty(LARGE * 2, np.float32)
    where = address(first)
    del first
    smaller = workspace.empty(LARGE + 1, np.float32)  # more than half: same block
    assert address(smaller) == where
    del smaller
    larger = workspace.empty(LARGE * 2 + 1, np.float32)  # more than the block: new memory
    assert address(larger) != where


def test_empty_like_keeps_a_channels_last_layout():
    x = F.to_nchw(np.zeros((8, 16, 16, 64), dtype=np.float32))  # NCHW view of NHWC memory
    y = workspace.empty_like(x)
    assert y.shape == x.shape and y.strides == x.strides
    mask = workspace.empty_like(x, bool)
    assert mask.dtype == bool and mask.shape == x.shape
    assert np.argsort(mask.strides).tolist() == np.argsort(x.strides).tolist()


def test_at_most_max_blocks_are_kept():
    held = [workspace.empty(LARGE, np.float32) for _ in range(workspace.MAX_BLOCKS + 3)]
    assert len(workspace._blocks()) == workspace.MAX_BLOCKS
    assert len({address(a) for a in held}) == len(held)  # every held array has its own memory
    del held
    workspace.empty(LARGE * 2, np.float32)  # a new size evicts a free block instead of growing
    assert len(workspace._blocks()) == workspace.MAX_BLOCKS


def test_kernel_results_survive_later_calls():
    """Outputs and gradients a caller keeps are never overwritten by the next call."""
    rng = np.random.default_rng(0)
    x1, x2 = (rng.standard_normal((16, 32, 48, 48)).astype(np.float32) for _ in range(2))
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    b = np.zeros(32, np.float32)
    kept = {}
    for name, x in (("one", x1), ("two", x2)):
        conv, cache = F.conv2d_forward(x, w, b, 1, 1)
        relu, mask = F.relu_forward(conv)
        pool, pool_cache = F.maxpool2d_forward(relu, 2, 2)
        dpool = F.maxpool2d_backward(np.ones_like(pool), pool_cache)
        drelu = F.relu_backward(dpool, mask)
        dx, dw, db = F.conv2d_backward(drelu, cache)
        kept[name] = [conv, relu, mask[0], pool, dpool, drelu, dx]  # the mask's packed bits
        if name == "one":
            copies = [a.copy() for a in kept["one"]]
    for array, copy in zip(kept["one"], copies):
        np.testing.assert_array_equal(array, copy)
    assert not np.array_equal(kept["one"][0], kept["two"][0])


def test_kept_bytes_stay_within_max_bytes(monkeypatch):
    monkeypatch.setattr(workspace, "MAX_BYTES", 3 * LARGE * 4)
    for size in (LARGE, 2 * LARGE + 1, 5 * LARGE, LARGE * 3 // 2 + 1):  # each freed at once
        workspace.empty(size, np.float32)
        assert sum(block.nbytes for block in workspace._blocks()) <= workspace.MAX_BYTES
    held = [workspace.empty(LARGE, np.float32) for _ in range(4)]  # a 4th does not fit
    assert sum(block.nbytes for block in workspace._blocks()) <= workspace.MAX_BYTES
    assert len({address(a) for a in held}) == 4
