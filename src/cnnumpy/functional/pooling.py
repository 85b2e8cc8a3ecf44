"""Max and average pooling over windows (see `cnnumpy.layers.MaxPool2D` and `AvgPool2D`)."""

from __future__ import annotations

import numpy as np

from .. import workspace
from .windowing import (batch_blocks, col2im_by_offset, pad2d, pair, to_channels_last, to_nchw,
                        unpad2d, windows)



# Bytes of input pooled at a time: the several passes over the kernel offsets then re-read
# data that is still in the cache.
POOL_BLOCK_BYTES = 2 * 2**20


def _padded(x, padding, value):
    """x padded with `value` as the NCHW view of channels-last memory (x itself without padding)."""
    if pair(padding) == (0, 0):
        return x
    return to_nchw(pad2d(x, padding, channels_last=True, value=value))


def maxpool2d(x, pool, stride, padding=0):
    """Maximum of each window, without the offsets backward needs (inference):
    (N, C, H, W) -> (N, C, H_out, W_out). See `maxpool2d_forward`."""
    out, _ = _max_scan(_padded(x, padding, -np.inf), pool, stride, offsets=False)
    return to_nchw(out)


def maxpool2d_forward(x, pool, stride, padding=0):
    """Maximum of each window (see `layers.MaxPool2D`): (N, C, H, W) -> (N, C, H_out, W_out).

    A running maximum over the kH*kW kernel offsets of the channels-last windows. The cache
    keeps, per window, the offset k = m*kW + q of its first maximum in row-major order (only a
    strictly greater value moves it), so that backward routes each window's gradient to
    exactly one input. As k grows along the scan, "k where greater, else the old offset" is
    max(old offset, k·greater): integer arithmetic, no masked writes. Padding is -inf, so a
    window's maximum is always one of its pixels (PyTorch requires padding <= kernel / 2).
    """
    x_pad = _padded(x, padding, -np.inf)
    out, max_offset = _max_scan(x_pad, pool, stride, offsets=True)
    return to_nchw(out), (max_offset, x_pad.shape, pair(pool), stride, pair(padding))


def _max_scan(x, pool, stride, offsets: bool):
    """(out, max_offset): the running maximum (N, H_out, W_out, C) and, if `offsets`, the offset
    of each window's first maximum (else None), in blocks of `POOL_BLOCK_BYTES` of images."""
    kh, kw = pair(pool)
    win = windows(x.transpose(0, 2, 3, 1), pool, stride, channels_last=True)
    out = workspace.empty(win.shape[:3] + win.shape[5:], x.dtype)  # (N, H_out, W_out, C)
    max_offset = workspace.empty(out.shape, np.min_scalar_type(kh * kw - 1)) if offsets else None

    def scan(images: slice) -> None:
        best = out[images]
        best[...] = win[images, :, :, 0, 0, :]
        if offsets:
            best_offset = max_offset[images]
            best_offset[...] = 0
            greater = np.empty(best.shape, dtype=bool)
            k_where_greater = np.empty_like(best_offset)
        for k in range(1, kh * kw):
            candidate = win[images, :, :, k // kw, k % kw, :]
            if offsets:
                np.greater(candidate, best, out=greater)
                np.multiply(greater, best_offset.dtype.type(k), out=k_where_greater)
                np.maximum(best_offset, k_where_greater, out=best_offset)
            np.maximum(best, candidate, out=best)

    for images in batch_blocks(len(x), x[0].nbytes, POOL_BLOCK_BYTES):
        scan(images)
    return out, max_offset


def maxpool2d_backward(dout, cache):
    """Route each window's gradient to its (first) maximum; overlapping windows accumulate."""
    max_offset, (n, c, h, w), (kh, kw), stride, padding = cache
    dout = to_channels_last(dout)  # (N, H_out, W_out, C), read once per kernel offset
    dx = workspace.empty((n, h, w, c), dout.dtype)

    def route_block(images: slice) -> None:
        """dx of a block of images: at each kernel offset, the gradient of the windows whose
        first maximum lies there."""
        def offset_gradient(m, q, out=None):
            return np.multiply(dout[images], max_offset[images] == m * kw + q, out=out)

        col2im_by_offset(offset_gradient, dx[images], (kh, kw), stride, channels_last=True)

    for images in batch_blocks(n, dx[0].nbytes, POOL_BLOCK_BYTES):
        route_block(images)
    return to_nchw(unpad2d(dx, padding, channels_last=True))


def avgpool2d_forward(x, pool, stride, padding=0):
    """Mean of each window (see `layers.AvgPool2D`): (N, C, H, W) -> (N, C, H_out, W_out).

    Padded zeros count in the mean (PyTorch's default, count_include_pad=True)."""
    x_pad = _padded(x, padding, 0)
    win = windows(x_pad.transpose(0, 2, 3, 1), pool, stride, channels_last=True)
    out = win.mean(axis=(3, 4), dtype=x.dtype)  # (N, H_out, W_out, C)
    return to_nchw(out), (x_pad.shape, pair(pool), stride, pair(padding))


def avgpool2d_backward(dout, cache):
    """Each input of a window receives dout / (kH*kW) from it; overlaps accumulate."""
    (n, c, h, w), (kh, kw), stride, padding = cache
    dout = dout.transpose(0, 2, 3, 1)  # (N, H_out, W_out, C)
    share = dout.dtype.type(1 / (kh * kw))
    dx = workspace.empty((n, h, w, c), dout.dtype)
    col2im_by_offset(lambda m, q, out=None: np.multiply(dout, share, out=out), dx, (kh, kw),
                    stride, channels_last=True)
    return to_nchw(unpad2d(dx, padding, channels_last=True))


def adaptive_bounds(size: int, out_size: int) -> list[tuple[int, int]]:
    """PyTorch's windows of adaptive pooling along one axis: output i averages the inputs
    [floor(i·size/out), ceil((i+1)·size/out)), so the windows cover the axis, may overlap by
    one, and differ in length by at most one (all equal when out divides size)."""
    return [(i * size // out_size, -(-(i + 1) * size // out_size)) for i in range(out_size)]


def _averaging_matrix(size: int, out_size: int, dtype) -> np.ndarray:
    """(out, size) matrix A with A[i, h] = 1/len_i for h in window i: A · v averages windows."""
    matrix = np.zeros((out_size, size), dtype=dtype)
    for i, (start, stop) in enumerate(adaptive_bounds(size, out_size)):
        matrix[i, start:stop] = 1 / (stop - start)
    return matrix


def adaptive_avgpool2d_forward(x, output_size):
    """Adaptive average pooling: (N, C, H, W) -> (N, C, oH, oW), each output the mean of its
    `adaptive_bounds` window along each axis.

    The mean over a window of rows and a window of columns is separable:
    out[n, c] = A_H · x[n, c] · A_Wᵀ with the averaging matrices of `_averaging_matrix`, so
    one pooling is two small matrix products whatever the window lengths. A global pool
    (1 x 1) is the plain mean, and an output as large as the input is x itself.
    """
    n, c, h, w = x.shape
    oh, ow = output_size
    if (oh, ow) == (h, w):
        return x, (x.shape, None)
    if (oh, ow) == (1, 1):
        out = x.mean(axis=(2, 3), dtype=x.dtype, keepdims=True)
        return out, (x.shape, None)
    a_h, a_w = _averaging_matrix(h, oh, x.dtype), _averaging_matrix(w, ow, x.dtype)
    out = np.einsum("ih,nchw,jw->ncij", a_h, x, a_w, optimize=True)
    return out, (x.shape, (a_h, a_w))


def adaptive_avgpool2d_backward(dout, cache):
    """The adjoint: dx[n, c] = A_Hᵀ · dout[n, c] · A_W (each input receives 1/len of the
    gradient of every window it lies in)."""
    x_shape, matrices = cache
    n, c, h, w = x_shape
    if matrices is None:
        if dout.shape == x_shape:
            return dout
        return np.broadcast_to(dout / dout.dtype.type(h * w), x_shape).copy()
    a_h, a_w = matrices
    return np.einsum("ih,ncij,jw->nchw", a_h, dout, a_w, optimize=True)
