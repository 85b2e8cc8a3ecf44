"""Elementwise passes against a short vector, in long runs of memory (`channelwise`, and
`add_bias` for a convolution's bias), and sums down the columns of a narrow matrix (of its
values, `column_sums`, or of two matrices' products, `column_dots`).

BatchNorm adds and multiplies a per-channel vector along every row of a (rows, C) matrix;
ReLU takes the maximum with 0. NumPy runs such a broadcast as one inner loop per row, and
with a narrow row (C = 16 values) the loop's start costs more than its arithmetic. So
`channelwise` sees contiguous rows k at a time, as a (rows/k, k·C) matrix against the vector
tiled k times: the same values, in runs of `RUN` elements. Measured on 64x16x32x32
float32 (4 MiB, one thread): runs of 16 values took 0.48 ms a pass, of 1024 values 0.22-0.27,
of 8192-65536 values 0.17-0.18, against 0.10-0.12 for adding a scalar (NumPy 2.4, AVX-512;
`np.maximum` against the scalar 0 took 0.4-0.55, against a tiled row of zeros 0.16-0.19).
"""

from __future__ import annotations

import numpy as np

from .. import workspace

RUN = 16384  # elements per run: 64 KiB of float32, the tiled vector stays in the L2 cache


def channelwise(ufunc, rows: np.ndarray, vector: np.ndarray, out: np.ndarray) -> np.ndarray:
    """ufunc(rows, vector) into out: the (C,) vector broadcast along the (M, C) rows. When rows
    and out are C-contiguous, the first rows go k = RUN // C at a time as runs of k·C values,
    and the M mod k rows left over as they are (runs of a divisor of M would be short for an
    M with few factors of 2)."""
    m, c = rows.shape
    k = max(1, RUN // c)
    whole = m // k * k
    if k == 1 or whole == 0 or not (rows.flags.c_contiguous and out.flags.c_contiguous):
        return ufunc(rows, vector, out=out)
    ufunc(rows[:whole].reshape(-1, k * c), np.tile(vector, k), out=out[:whole].reshape(-1, k * c))
    if whole < m:
        ufunc(rows[whole:], vector, out=out[whole:])
    return out


def in_memory_order(x: np.ndarray, like: np.ndarray | None = None) -> np.ndarray | None:
    """x's values as an (x.size, 1) view in the order they lie in memory, or None when x
    is not contiguous in that order (a strided slice, say). With `like` (an array of x's
    shape), in the order of like's memory instead, so that two arrays' views pair their
    elements alike."""
    values = x.transpose(workspace.memory_order(x if like is None else like))
    return values.reshape(-1, 1) if values.flags.c_contiguous else None


def column_sums(rows: np.ndarray, dtype=None) -> np.ndarray:
    """Σ over the (M, C) rows, per column, as a vector-matrix product (in `dtype`, by default
    the rows'): NumPy's own sum along the long axis of a narrow matrix was 13 times slower
    (16 channels)."""
    return np.ones(len(rows), dtype=rows.dtype if dtype is None else dtype) @ rows


def column_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ over the rows of a · b, per column, for two (M, C) matrices: one pass that reads
    both and writes nothing of their size (`np.einsum`), where multiplying into a third
    matrix and summing its columns took two. Narrow contiguous rows (C < 64) go in runs of
    `RUN` values, as in `channelwise`, whose k·C partial sums are then folded to C.
    Measured (one thread, float32, interleaved): 0.28 ms at 65536 x 16 (einsum over the rows
    as they are 0.40, the product and its column sums 0.55), 0.09 at 16384 x 32 (0.14,
    0.17); from 64 channels the runs were slower (0.93 against 0.74 ms at 50176 x 64).
    float32 sums of many rows: einsum adds the rows one after another, so from 64 channels
    the relative error grows with M (7e-6 at 50176 rows, 2e-5 at 262144, against 2e-6 and
    8e-6 for OpenBLAS's product); the runs keep it near 1e-6."""
    m, c = a.shape
    k = max(1, RUN // c)
    whole = m // k * k
    if c >= 64 or whole == 0 or not (a.flags.c_contiguous and b.flags.c_contiguous):
        return np.einsum("ij,ij->j", a, b)
    runs = np.einsum("ij,ij->j", a[:whole].reshape(-1, k * c), b[:whole].reshape(-1, k * c))
    sums = runs.reshape(k, c).sum(axis=0)
    if whole < m:
        sums += np.einsum("ij,ij->j", a[whole:], b[whole:])
    return sums


def bias_vector(b, c: int, dtype) -> np.ndarray:
    """A per-channel bias as a (C,) vector of `dtype`, from a (C,) vector or whatever assigns
    to one (a list, a scalar, a (1, C) row), as the bias column of a convolution's weight
    matrix takes it."""
    bias = np.empty(c, dtype)
    bias[...] = np.asarray(b)
    return bias


def add_bias(out: np.ndarray, b) -> None:
    """out += b for channels-last out (..., C) in place, b a per-channel bias (`bias_vector`)."""
    c = out.shape[-1]
    bias = bias_vector(b, c, out.dtype)
    if not out.flags.c_contiguous:  # a reshape would be a copy: add through the broadcast
        np.add(out, bias, out=out)
        return
    flat = out.reshape(-1, c)
    channelwise(np.add, flat, bias, flat)
