"""Where a part of a split batch lies, for the layers whose result depends on the whole batch.

BatchNorm normalises with the statistics of the whole batch (the parts' sums, summed), and
Dropout draws exactly its part's slice of the whole batch's mask. The parts may be threads or
worker processes of one machine (`cnnumpy.parallel`, `cnnumpy.part_processes`) or MPI ranks
(`cnnumpy.distributed`).
"""

from __future__ import annotations

import numpy as np


class BatchSplit:
    """Where one part of a batch split into parts lies, and how to sum over all parts.

    `start`: index of the part's first sample in the whole batch; `total`: samples in the
    whole batch; `sum(array)`: the elementwise sum of `array` over every part (each part calls
    it the same number of times, in the same order, and every part receives the same values
    bit for bit; the result is not to be changed in place). `whole`: True for a split of
    one part, the whole batch (a run in one process), whose layers need no sums.
    """

    start: int = 0
    total: int = 0
    whole: bool = False

    def sum(self, array: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def set_batch_split(model, split: BatchSplit | None) -> None:
    """Tell every module of `model` that reads it (BatchNorm, Dropout) where its batch lies."""
    for module in model.modules():
        if hasattr(module, "batch_split"):
            module.batch_split = split
