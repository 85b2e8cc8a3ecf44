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


def test_a_block_serves_sizes_from_one_fit_th_to_all_of_it():
    block = LARGE * 3  # float32 elements
    first = workspace.empty(block, np.float32)
    where = address(first)
    del first
    smallest = -(-block // workspace.FIT)  # the fewest elements the block serves
    served = workspace.empty(int(smallest), np.float32)
    assert address(served) == where
    del served
    assert address(workspace.empty(int(smallest) - 1, np.float32)) != where  # too small
    assert address(workspace.empty(block + 1, np.float32)) != where  # more than the block


def test_empty_like_keeps_a_channels_last_layout():
    x = F.to_nchw(np.zeros((8, 16, 16, 64), dtype=np.float32))  # NCHW view of NHWC memory
    y = workspace.empty_like(x)
    assert y.shape == x.shape and y.strides == x.strides
    mask = workspace.empty_like(x, bool)
    assert mask.dtype == bool and mask.shape == x.shape
    assert np.argsort(mask.strides).tolist() == np.argsort(x.strides).tolist()


def hold_in_turn(sizes):
    """Ask for arrays of these float32 sizes, all alive at once, as a step's caches are; their
    addresses."""
    held = [workspace.empty(size, np.float32) for size in sizes]
    return [address(a) for a in held]


def kept_sizes():
    """The kept blocks' sizes in float32 elements, checking the pool's lists agree."""
    state = workspace._state()
    assert len(state.taken) == len(state.sizes) == len(state.blocks)
    assert state.sizes == [block.nbytes for block in state.blocks] == sorted(state.sizes)
    return [size // 4 for size in state.sizes]


def test_a_loop_of_requests_is_served_from_kept_blocks():
    sizes = [LARGE * (1 + k % 5) for k in range(40)]  # more blocks than a fixed count kept
    first = hold_in_turn(sizes)
    assert len(set(first)) == len(sizes)
    assert hold_in_turn(sizes) == first  # the second step takes the blocks of the first
    assert hold_in_turn(sizes) == first


def test_when_kept_bytes_are_full_the_kept_blocks_stay(monkeypatch):
    """A loop that needs more than MAX_BYTES keeps what fits, rather than forgetting, at each
    request, the block the loop asks for next."""
    sizes = [LARGE, LARGE * 16 // 10, LARGE * 26 // 10, LARGE * 42 // 10]  # no block serves two
    monkeypatch.setattr(workspace, "MAX_BYTES", sum(sizes[:3]) * 4)
    for step in range(3):
        where = [address(workspace.empty(size, np.float32)) for size in sizes]  # freed at once
        if step == 0:
            first = where
        kept = [block.nbytes for block in workspace._blocks()]
        assert kept == [size * 4 for size in sizes[:3]]  # the fourth is used once, each round
        assert where[:3] == first[:3]


def test_stale_free_blocks_make_room(monkeypatch):
    monkeypatch.setattr(workspace, "MAX_BYTES", 2 * LARGE * 4)
    monkeypatch.setattr(workspace, "STALE", 3)
    workspace.empty(LARGE, np.float32)  # kept, then free
    for _ in range(3):  # requests it does not serve; the larger size does not fit beside it
        hold_in_turn([LARGE * 2])
    assert kept_sizes() == [LARGE]
    hold_in_turn([LARGE * 2])  # now untaken for more than STALE requests: forgotten
    assert kept_sizes() == [LARGE * 2]


def test_a_block_taken_again_is_not_stale(monkeypatch):
    monkeypatch.setattr(workspace, "MAX_BYTES", 2 * LARGE * 4)
    monkeypatch.setattr(workspace, "STALE", 3)
    for _ in range(6):
        workspace.empty(LARGE, np.float32)  # kept at the first request, taken at each
    workspace.empty(2 * LARGE, np.float32)  # does not fit beside it, which is not stale
    assert kept_sizes() == [LARGE]


def test_staleness_counts_every_request(monkeypatch):
    monkeypatch.setattr(workspace, "MAX_BYTES", 3 * LARGE * 4)
    monkeypatch.setattr(workspace, "STALE", 3)
    a, _ = hold_in_turn([LARGE, LARGE])  # requests 1, 2
    for _ in range(4):  # requests 3-6, served by the first block
        assert address(workspace.empty(LARGE, np.float32)) == a
    workspace.empty(2 * LARGE, np.float32)  # the second untaken for 5 > 3 requests: forgotten
    assert kept_sizes() == [LARGE, 2 * LARGE]
    assert address(workspace.empty(LARGE, np.float32)) == a


def test_the_least_recently_taken_stale_block_goes_first(monkeypatch):
    monkeypatch.setattr(workspace, "MAX_BYTES", 35 * LARGE * 4 // 10)
    monkeypatch.setattr(workspace, "STALE", 0)
    workspace.empty(LARGE * 16 // 10, np.float32)  # request 1: the larger block
    workspace.empty(LARGE, np.float32)  # request 2, a block of its own
    workspace.empty(2 * LARGE, np.float32)  # request 3: both stale; forgetting the first fits
    assert kept_sizes() == [LARGE, 2 * LARGE]


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
