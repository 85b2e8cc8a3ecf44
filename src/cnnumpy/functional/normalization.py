"""Batch normalisation (see `cnnumpy.layers.BatchNorm2D` for the formulas and shapes).

The kernels see the batch as a matrix of rows: (N, C) features, or every pixel of (N, C, H, W)
images as a row of C channels (the channels-last memory of the other kernels' outputs, so
the rows are a view, not a copy). Statistics are per channel, over the rows.

A batch split into parts (threads, processes) normalises with the statistics of the whole
batch when `total_sum` is given: a function returning the elementwise sum of an array over
every part (`cnnumpy.parallel`); without it, the part is the whole batch.
"""

from __future__ import annotations

import numpy as np

from .. import workspace
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


def batchnorm_forward(x, gamma, beta, eps, total_sum=None):
    """Training mode: normalise every channel with the batch's mean and biased variance.

        mean = Σ x / m,   var = Σ (x - mean)² / m,   x̂ = (x - mean) / √(var + eps),
        out = γ · x̂ + β,   over the m = N (·H·W) values of each channel

    computed as out = (x - mean) · (γ / √(var + eps)) + β in five passes over the values:
    two that only read (the sums for the mean, the sums of the centred values' squares) and
    three that write (the centred values, the scaling, the shift). The cache keeps the
    centred values x - mean, from which backward gets x̂.

    A part of a split batch centres its values on its own mean instead, and meets the other
    parts once for the batch's statistics (`_combined`, with a sixth pass that only reads);
    x - mean is then its centred values plus the offset of its own mean from the batch's,
    which the shift takes in (the cache keeps the offset too). Where that combination could
    lose digits, the parts meet a second time.
    Returns (out, cache, mean, var): the batch statistics, for the running averages.
    """
    rows = _rows(x)
    count = rows.dtype.type(len(rows))
    sums = column_sums(rows)
    own_mean = sums / max(count, 1)  # an empty part (an MPI rank without samples): zeros
    centred = channelwise(np.subtract, rows, own_mean, workspace.empty_like(rows))
    squares = column_dots(centred, centred)
    if total_sum is None:
        mean, var, offset = own_mean, squares / count, None
    else:
        mean, var, offset, count = _combined(centred, own_mean, squares, count, total_sum)
    inv_std = 1 / np.sqrt(var + eps)
    scale = gamma * inv_std
    shift = beta if offset is None else beta + offset * scale
    out = channelwise(np.multiply, centred, scale.astype(rows.dtype, copy=False),
                      workspace.empty_like(rows))
    channelwise(np.add, out, shift.astype(rows.dtype, copy=False), out)
    return (_like_input(out, x.shape), (centred, gamma, inv_std, count, x.shape, offset),
            mean, var)


def _combined(centred, own_mean, squares, count, total_sum):
    """The batch's (mean, var, offset, count) from a part's rows centred on its own mean o
    (rounded: the centred values' sum r is not quite 0), their sum of squares and count n;
    `offset` = o - the batch's mean.

    The part's exact mean is a = o + r / n and its squares about it M2 = Σ (x - o)² - r² / n;
    r, a sum of small values, is one more pass that only reads, and keeps the result free of
    the rounding of o and of the sums it came from (the part's sums err by 1e-7 of the mean
    in float32; times the parts' distance apart, that error would enter the variance). One
    meeting sums n, n·a, M2 and n·a² over the parts, in float64 (Chan, Golub and LeVeque's
    parallel variance):

        mean = Σ n·a / N,   Σ (x - mean)² = Σ M2 + (Σ n·a² - N·mean²)

    The bracket, Σ n (a - mean)², is a difference of sums of the size of Σ n·a², off by about
    1e-16 of that. While Σ n·a² is at most ONE_MEETING_RATIO times the result in every
    channel (the mean within about 30 standard deviations of zero), that error stays within
    about 1e-12 of the variance (measured 2e-13 with 2 parts, 8e-13 with 32), and that is the
    result. Otherwise (say means of 1e4 with standard deviations of 0.01, where it would be
    off by 1e-4), or with a NaN, the rows are centred on the batch's mean (`centred`, in
    place) and the parts meet again, for their sums of squares about it: the way the whole
    batch's are computed. Every part decides alike from the same sums: the parts of a split
    must receive bit-identical sums (threads and processes add the parts in one order; MPI's
    Allreduce gives every rank the same result, as the standard requires)."""
    n = np.float64(count)
    offsets = column_sums(centred).astype(np.float64) / max(n, 1)  # r / n
    exact_mean = own_mean + offsets
    c = len(exact_mean)
    met = total_sum(np.concatenate([[n], n * exact_mean, squares - n * offsets**2,
                                    n * exact_mean**2]))
    total_n, mean = met[0], met[1 : 1 + c] / met[0]
    squared_means = met[1 + 2 * c :]  # Σ n·a²
    total = met[1 + c : 1 + 2 * c] + (squared_means - total_n * mean**2)
    if np.all(squared_means <= ONE_MEETING_RATIO * total):
        return mean, total / total_n, own_mean - mean, total_n
    channelwise(np.subtract, centred, (mean - own_mean).astype(centred.dtype), centred)
    var = total_sum(column_dots(centred, centred).astype(np.float64)) / total_n
    return mean, var, None, total_n


def batchnorm_backward(dout, cache, total_sum=None):
    """Exact gradients of the training-mode function (the statistics depend on every input):

        dβ = Σ dout,   dγ = Σ dout · x̂,
        dx = γ / √(var + eps) · (dout - dβ_all / m - x̂ · dγ_all / m)

    where dβ_all, dγ_all are the sums over the whole batch (every part). Returns
    (dx, dgamma, dbeta), the parameter gradients of this part's rows only (the parts' sums
    add up to the whole batch's, as any parameter gradient's do). With the cached centred
    values c = x - mean and s = 1 / √(var + eps) (so x̂ = c · s): dγ = s · Σ dout · c, and
    dx = (c · (-s · dγ_all / m) + dout) · γs - γs · dβ_all / m: six passes over the values,
    two that only read (the sums for dβ and dγ) and four that write dx. A part whose cached
    values are centred on its own mean (c' = c - offset) adds the offset's share to the
    sums (Σ dout · c = Σ dout · c' + offset · dβ) and to the last pass's constant.
    """
    total_sum = total_sum or _one_part_sum
    centred, gamma, inv_std, count, x_shape, offset = cache
    g = _rows(dout)
    dbeta = column_sums(g)
    dots = column_dots(g, centred)
    dgamma = (dots if offset is None else dots + offset * dbeta) * inv_std
    c = len(dbeta)
    both = total_sum(np.concatenate([dbeta, dgamma]))
    scale = (gamma * inv_std).astype(g.dtype, copy=False)  # float64 statistics of a split
    centred_factor = -inv_std * both[c:] / count
    constant = scale * both[:c] / count
    if offset is not None:
        constant = constant - scale * offset * centred_factor
    dx = channelwise(np.multiply, centred, centred_factor.astype(g.dtype, copy=False),
                     workspace.empty_like(centred))
    dx += g
    channelwise(np.multiply, dx, scale, dx)
    channelwise(np.subtract, dx, constant.astype(g.dtype, copy=False), dx)
    return _like_input(dx, x_shape), dgamma.astype(g.dtype, copy=False), dbeta


def batchnorm_infer(x, gamma, beta, running_mean, running_var, eps):
    """Evaluation mode, one affine map per channel: out = x · s + (β - mean · s), with
    s = γ / √(running_var + eps)."""
    scale = gamma / np.sqrt(running_var + eps)
    shift = beta - running_mean * scale
    rows = _rows(x)
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
