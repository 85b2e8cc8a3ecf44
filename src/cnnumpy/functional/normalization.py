"""Batch normalisation (see `cnnumpy.layers.BatchNorm2D` for the formulas and shapes).

The kernels see the batch as a matrix of rows: (N, C) features, or every pixel of (N, C, H, W)
images as a row of C channels (the channels-last memory of the other kernels' outputs, so
the rows are a view, not a copy). Statistics are per channel, over the rows. With Numba
installed (the `fast` extra), the passes over the rows are compiled loops (`fused`): two in
training each way, one in evaluation; else NumPy's, one operation a pass.

A batch split into parts (threads, processes) normalises with the statistics of the whole
batch when `total_sum` is given: a function returning the elementwise sum of an array over
every part (`cnnumpy.parallel`); without it, the part is the whole batch.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import workspace
from . import fused
from .channelwise import channelwise, column_dots, column_sums
from .windowing import to_channels_last, to_nchw


def _rows(x: np.ndarray) -> np.ndarray:
    """(N, C) -> itself; (N, C, H, W) -> (N*H*W, C) rows, a view of channels-last memory."""
    return x if x.ndim == 2 else to_channels_last(x).reshape(-1, x.shape[1])


def _like_input(rows: np.ndarray, x_shape) -> np.ndarray:
    """Rows back in the input's shape: (N, C), or the NCHW view of (N, H, W, C) memory."""
    if len(x_shape) == 2:
        return rows
    n, c, h, w = x_shape
    return to_nchw(rows.reshape(n, h, w, c))


def _one_part_sum(array: np.ndarray) -> np.ndarray:
    """The sum over the parts of a batch that is whole: the array itself."""
    return array


# A part's statistics are combined with the others' in one meeting while the batch's mean is
# within about sqrt(ONE_MEETING_RATIO) standard deviations of zero (see `_combined`).
ONE_MEETING_RATIO = 1e3


class BatchNormCache(NamedTuple):
    """What training-mode backward needs: x - mean = values - centre, per channel (centre
    None: 0), with inv_std = 1 / √(var + eps), the batch's `count` of values per channel and
    x's shape. `fused`: the values are x's own rows, for the fused loops (`fused`); else
    x's rows centred in NumPy passes (on the part's own mean, for a split batch)."""

    values: np.ndarray
    centre: np.ndarray | None
    gamma: np.ndarray
    inv_std: np.ndarray
    count: float
    shape: tuple
    fused: bool


def batchnorm_forward(x, gamma, beta, eps, total_sum=None):
    """Training mode: normalise every channel with the batch's mean and biased variance.

        mean = Σ x / m,   var = Σ (x - mean)² / m,   x̂ = (x - mean) / √(var + eps),
        out = γ · x̂ + β,   over the m = N (·H·W) values of each channel

    computed as out = (x - mean) · (γ / √(var + eps)) + β. With the fused loops (`fused`,
    when Numba is installed): two passes over the values, one that reads them for the sums
    of x - k and of its squares (k a value near the mean, from a sample of rows), one that
    writes out; the cache keeps x's rows (x itself when its memory is channels-last, as the
    kernels' outputs are, else a channels-last copy): do not change x before backward.
    In NumPy: five passes, two that only read (the sums for the mean, the sums of the
    centred values' squares) and three that write (the centred values, the scaling, the
    shift); the cache keeps the centred values x - mean.

    A part of a split batch combines its count, mean and sum of squares about that mean with
    the other parts' in one meeting (`_combined`); its NumPy passes centre its values on its
    own mean and the shift takes in that mean's offset from the batch's (with a sixth pass
    that only reads, for the part's exact mean). Where the combination could lose digits,
    the parts meet a second time.
    Returns (out, cache, mean, var): a `BatchNormCache` and the batch statistics in x's
    dtype, for the running averages.
    """
    rows = _rows(x)
    if fused.usable(rows):
        return _forward_fused(rows, x.shape, gamma, beta, eps, total_sum)
    count = rows.dtype.type(len(rows))
    sums = column_sums(rows)
    own_mean = sums / max(count, 1)  # an empty part (an MPI rank without samples): zeros
    centred = channelwise(np.subtract, rows, own_mean, workspace.empty_like(rows))
    squares = column_dots(centred, centred)
    centre = None
    if total_sum is None:
        mean, var = own_mean, squares / count
    else:
        # The part's exact mean is a = o + r / n for its rounded mean o and the centred
        # values' sum r (not quite 0), one more pass that only reads; its squares about a
        # are Σ (x - o)² - r² / n. This keeps the combination free of the rounding of o and
        # of the sums it came from (the part's sums err by 1e-7 of the mean in float32;
        # times the parts' distance apart, that error would enter the variance).
        n = np.float64(count)
        offsets = column_sums(centred).astype(np.float64) / max(n, 1)  # r / n

        def squares_about(mean):  # the second meeting's: centre on the batch's mean
            channelwise(np.subtract, centred, (mean - own_mean).astype(centred.dtype), centred)
            return column_dots(centred, centred).astype(np.float64)

        mean, var, count, once = _combined(own_mean + offsets, squares - n * offsets**2, n,
                                           total_sum, squares_about)
        if once:  # the values are centred on the part's own mean
            centre = mean - own_mean
    inv_std = 1 / np.sqrt(var + eps)
    scale = gamma * inv_std
    shift = beta if centre is None else beta - centre * scale
    out = channelwise(np.multiply, centred, scale.astype(rows.dtype, copy=False),
                      workspace.empty_like(rows))
    channelwise(np.add, out, shift.astype(rows.dtype, copy=False), out)
    cache = BatchNormCache(centred, centre, gamma, inv_std, count, x.shape, False)
    return _like_input(out, x.shape), cache, mean.astype(x.dtype), var.astype(x.dtype)


def _forward_fused(rows, x_shape, gamma, beta, eps, total_sum):
    """`batchnorm_forward` in two passes over the rows (`fused`). The sums are of x - k for
    k the mean of a sample of rows rounded to x's dtype: the part's exact mean is then
    k + Σ (x - k) / n and its squares about it Σ (x - k)² - (Σ (x - k))² / n, a difference
    that loses no digits while k is within a few standard deviations of the mean."""
    n = np.float64(len(rows))
    sample = rows[:: max(1, len(rows) // 64)]
    k = (sample.mean(axis=0, dtype=np.float64) if len(rows) else np.zeros(rows.shape[1])
         ).astype(rows.dtype).astype(np.float64)
    sums, squares = fused.shifted_sums(rows, k)
    own_mean = k + sums / max(n, 1)
    own_squares = np.maximum(squares - sums * sums / max(n, 1), 0)
    if total_sum is None:
        mean, var, count = own_mean, own_squares / n, n
    else:
        def squares_about(mean):  # Σ (x - mean)² from the sums about k
            delta = mean - k
            return squares - 2 * delta * sums + n * delta**2

        mean, var, count, _ = _combined(own_mean, own_squares, n, total_sum, squares_about)
    inv_std = 1 / np.sqrt(var + eps)
    scale = gamma * inv_std
    centre = mean.astype(rows.dtype)  # x - mean = (x - centre) - (mean - centre)
    shift = beta - (mean - centre) * scale
    out = fused.affine(rows, centre, scale, shift, workspace.empty_like(rows))
    cache = BatchNormCache(rows, mean, gamma, inv_std, count, x_shape, True)
    return _like_input(out, x_shape), cache, mean.astype(rows.dtype), var.astype(rows.dtype)


def _combined(own_mean, squares, n, total_sum, squares_about):
    """The batch's (mean, var, count, once) from a part's exact mean a, its sum of squares
    about a, M2, and its count n (float64), `once` False when the parts met twice.
    `squares_about(mean)` gives the part's sum of squares about the batch's mean, for the
    second meeting.

    One meeting sums n, n·a, M2 and n·a² over the parts, in float64 (Chan, Golub and
    LeVeque's parallel variance):

        mean = Σ n·a / N,   Σ (x - mean)² = Σ M2 + (Σ n·a² - N·mean²)

    The bracket, Σ n (a - mean)², is a difference of sums of the size of Σ n·a², off by about
    1e-16 of that. While Σ n·a² is at most ONE_MEETING_RATIO times the result in every
    channel (the mean within about 30 standard deviations of zero), that error stays within
    about 1e-12 of the variance (measured 2e-13 with 2 parts, 8e-13 with 32), and that is the
    result. Otherwise (say means of 1e4 with standard deviations of 0.01, where it would be
    off by 1e-4), or with a NaN, the parts meet again, for their sums of squares about the
    batch's mean: the way the whole batch's are computed. Every part decides alike from the
    same sums: the parts of a split must receive bit-identical sums (threads and processes
    add the parts in one order; MPI's Allreduce gives every rank the same result, as the
    standard requires)."""
    c = len(own_mean)
    met = total_sum(np.concatenate([[n], n * own_mean, squares, n * own_mean**2]))
    total_n, mean = met[0], met[1 : 1 + c] / met[0]
    squared_means = met[1 + 2 * c :]  # Σ n·a²
    total = met[1 + c : 1 + 2 * c] + (squared_means - total_n * mean**2)
    if np.all(squared_means <= ONE_MEETING_RATIO * total):
        return mean, total / total_n, total_n, True
    return mean, total_sum(squares_about(mean)) / total_n, total_n, False


def batchnorm_backward(dout, cache: BatchNormCache, total_sum=None):
    """Exact gradients of the training-mode function (the statistics depend on every input):

        dβ = Σ dout,   dγ = Σ dout · x̂,
        dx = γ / √(var + eps) · (dout - dβ_all / m - x̂ · dγ_all / m)

    where dβ_all, dγ_all are the sums over the whole batch (every part). Returns
    (dx, dgamma, dbeta), the parameter gradients of this part's rows only (the parts' sums
    add up to the whole batch's, as any parameter gradient's do). With c = x - mean (the
    cache's values - centre) and s = 1 / √(var + eps) (so x̂ = c · s): dγ = s · Σ dout · c,
    and dx = dout · γs + c · (-γs · s · dγ_all / m) - γs · dβ_all / m. Fused: two passes,
    one that reads dout and x for both sums, one that writes dx. In NumPy: six passes, two
    that only read (the sums for dβ and dγ) and four that write dx.
    """
    total_sum = total_sum or _one_part_sum
    values, centre, gamma, inv_std, count, x_shape, is_fused = cache
    g = _rows(dout)
    if is_fused:
        g = np.ascontiguousarray(g, dtype=values.dtype)
        rounded = centre.astype(values.dtype)
        residual = centre - rounded  # x - mean = (x - rounded) - residual
        dbeta, dots = fused.gradient_sums(g, values, rounded)
        dots -= residual * dbeta
    else:
        dbeta = column_sums(g)
        dots = column_dots(g, values)
        if centre is not None:
            dots = dots - centre * dbeta
    dgamma = dots * inv_std
    c = len(dbeta)
    both = total_sum(np.concatenate([dbeta, dgamma]))
    scale = gamma * inv_std
    centred_factor = -inv_std * both[c:] / count
    values_factor = scale * centred_factor  # of c = x - mean
    constant = -scale * both[:c] / count
    if is_fused:
        dx = fused.gradient_input(g, values, rounded, scale, values_factor,
                                  constant - residual * values_factor, workspace.empty_like(g))
    else:
        if centre is not None:
            constant = constant - centre * values_factor
        dtype = g.dtype
        dx = channelwise(np.multiply, values, centred_factor.astype(dtype, copy=False),
                         workspace.empty_like(values))
        dx += g
        channelwise(np.multiply, dx, scale.astype(dtype, copy=False), dx)
        channelwise(np.add, dx, constant.astype(dtype, copy=False), dx)
    return (_like_input(dx, x_shape), dgamma.astype(values.dtype, copy=False),
            dbeta.astype(values.dtype, copy=False))


def batchnorm_infer(x, gamma, beta, running_mean, running_var, eps):
    """Evaluation mode, one affine map per channel: out = x · s + (β - mean · s), with
    s = γ / √(running_var + eps): one pass over the values fused (as (x - mean) · s + β),
    two in NumPy."""
    scale = gamma / np.sqrt(running_var + eps)
    rows = _rows(x)
    if fused.usable(rows):
        out = fused.affine(rows, running_mean, scale, beta, workspace.empty_like(rows))
        return _like_input(out, x.shape)
    shift = beta - running_mean * scale
    out = channelwise(np.multiply, rows, scale.astype(x.dtype), workspace.empty_like(rows))
    channelwise(np.add, out, shift.astype(x.dtype), out)
    return _like_input(out, x.shape)


def batchnorm_folded(w, b, gamma, beta, running_mean, running_var, eps):
    """The weights and bias of a convolution (or linear map) w·x + b followed by BatchNorm in
    evaluation mode, folded into one: with s = γ / √(running_var + eps) per output channel,

        W' = s · W  (each output channel's weights scaled),   b' = s · b + β - running_mean · s

    in w's dtype; b None counts as zeros. W' x + b' equals the two maps applied in turn up to
    float rounding."""
    scale = gamma / np.sqrt(running_var + eps)
    shape = (-1,) + (1,) * (w.ndim - 1)
    bias = 0 if b is None else b
    folded_w = (w * scale.reshape(shape)).astype(w.dtype, copy=False)
    folded_b = (bias * scale + beta - running_mean * scale).astype(w.dtype, copy=False)
    return folded_w, folded_b
