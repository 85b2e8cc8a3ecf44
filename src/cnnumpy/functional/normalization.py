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


def batchnorm_forward(x, gamma, beta, eps, total_sum=None):
    """Training mode: normalise every channel with the batch's mean and biased variance.

        mean = Σ x / m,   var = Σ (x - mean)² / m,   x̂ = (x - mean) / √(var + eps),
        out = γ · x̂ + β,   over the m = N (·H·W) values of each channel

    computed as out = (x - mean) · (γ / √(var + eps)) + β in five passes over the values:
    two that only read (the sums for the mean, the sums of the centred values' squares) and
    three that write (the centred values, the scaling, the shift). The cache keeps the
    centred values x - mean, from which backward gets x̂.
    Returns (out, cache, mean, var): the batch statistics, for the running averages.
    """
    total_sum = total_sum or _one_part_sum
    rows = _rows(x)
    sums = total_sum(np.append(column_sums(rows), rows.dtype.type(len(rows))))
    count, mean = sums[-1], sums[:-1] / sums[-1]
    centred = channelwise(np.subtract, rows, mean, workspace.empty_like(rows))
    var = total_sum(column_dots(centred, centred)) / count
    inv_std = 1 / np.sqrt(var + eps)
    out = channelwise(np.multiply, centred, gamma * inv_std, workspace.empty_like(rows))
    channelwise(np.add, out, beta, out)
    return _like_input(out, x.shape), (centred, gamma, inv_std, count, x.shape), mean, var


def batchnorm_backward(dout, cache, total_sum=None):
    """Exact gradients of the training-mode function (the statistics depend on every input):

        dβ = Σ dout,   dγ = Σ dout · x̂,
        dx = γ / √(var + eps) · (dout - dβ_all / m - x̂ · dγ_all / m)

    where dβ_all, dγ_all are the sums over the whole batch (every part). Returns
    (dx, dgamma, dbeta), the parameter gradients of this part's rows only (the parts' sums
    add up to the whole batch's, as any parameter gradient's do). With the cached centred
    values c = x - mean and s = 1 / √(var + eps) (so x̂ = c · s): dγ = s · Σ dout · c, and
    dx = (c · (-s · dγ_all / m) + dout) · γs - γs · dβ_all / m: six passes over the values,
    two that only read (the sums for dβ and dγ) and four that write dx.
    """
    total_sum = total_sum or _one_part_sum
    centred, gamma, inv_std, count, x_shape = cache
    g = _rows(dout)
    dbeta = column_sums(g)
    dgamma = column_dots(g, centred) * inv_std
    c = len(dbeta)
    both = total_sum(np.concatenate([dbeta, dgamma]))
    scale = gamma * inv_std
    dx = channelwise(np.multiply, centred, -inv_std * both[c:] / count,
                     workspace.empty_like(centred))
    dx += g
    channelwise(np.multiply, dx, scale, dx)
    channelwise(np.subtract, dx, scale * both[:c] / count, dx)
    return _like_input(dx, x_shape), dgamma, dbeta


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
