"""Pure array kernels: convolution, pooling, ReLU, flatten and linear, forward and backward.

Every kernel is a function of arrays and nothing else:

    out, cache = <op>_forward(x, ...)        # cache holds what backward needs
    dx, ... = <op>_backward(dout, cache)

The backward kernels return the exact derivatives of whatever scalar `dout` is the gradient
of; nothing is divided by the batch size here (the loss takes the batch mean, once).

Layout is NCHW, weights are (C_out, C_in, kH, kW), as in PyTorch. Kernels trust their callers:
shapes and dtypes are checked by the layers in `cnnumpy.layers`, whose docstrings hold the
formulas and `Shape:` blocks. Outputs keep the dtype of the inputs (float32 stays float32).

Memory layout. Inside, the image kernels work channels-last: a batch is held in memory as
(N, H, W, C), so that a pixel's channels are contiguous, the column matrix of a convolution is
a copy of contiguous runs and its matrix product writes the output in place, without
transposes. The 4-d arrays the kernels return are NCHW *views* of such memory: shape
(N, C, H, W) and NCHW indexing, only the strides differ (PyTorch calls this the
`channels_last` memory format). Passed from kernel to kernel, they need no conversion; a kernel
given an ordinary NCHW array reads it through a transposed view or converts it once.

Memory. Large arrays (outputs, masks, columns, gradients) come from `cnnumpy.workspace`,
which recycles the memory of earlier arrays that nothing references any more instead of
asking the operating system for new pages at every step.

One windowing pair serves convolution and pooling:
`windows` is a strided view of every kH x kW window of an image (NCHW or channels-last), and
`windows_backward` is its adjoint: it adds each window's gradient back onto the pixels the
window was read from.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import workspace


def pair(value) -> tuple[int, int]:
    """`3 -> (3, 3)`, `(3, 2) -> (3, 2)`: the (height, width) form of a size argument."""
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


# --------------------------------------------------------------------------- layout


def to_channels_last(x: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> the same images as a C-contiguous (N, H, W, C) array.

    A view (no copy) when x already has channels-last memory, as every 4-d kernel output has.
    """
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def to_nchw(x: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> its (N, C, H, W) view, the form in which kernels return images."""
    return x.transpose(0, 3, 1, 2)


def _spatial_index(axis: int, rows: slice, cols: slice) -> tuple:
    """Index selecting `rows` and `cols` of the spatial axes that start at `axis`."""
    return (slice(None),) * axis + (rows, cols)


def pad2d(x: np.ndarray, padding, channels_last: bool = False) -> np.ndarray:
    """Zero-pad the spatial axes of an NCHW array, returning the layout the caller asks for.

    (N, C, H, W) -> (N, H + 2pH, W + 2pW, C) if `channels_last`, else (N, C, H + 2pH, W + 2pW).
    One copy does both the padding and the layout change; without padding, a view of x.
    """
    ph, pw = pair(padding)
    if channels_last:
        x = x.transpose(0, 2, 3, 1)
    if ph == 0 and pw == 0:
        return x
    axis = 1 if channels_last else 2  # first spatial axis
    h, w = x.shape[axis : axis + 2]
    shape = list(x.shape)
    shape[axis : axis + 2] = h + 2 * ph, w + 2 * pw
    padded = workspace.empty(shape, x.dtype)
    inside = _spatial_index(axis, slice(ph, ph + h), slice(pw, pw + w))
    _clear_border(padded, axis, ph, pw)
    padded[inside] = x
    return padded


def _clear_border(padded: np.ndarray, axis: int, ph: int, pw: int) -> None:
    """Zero the pH rows and pW columns on each side of the spatial axes starting at `axis`."""
    every = slice(None)
    for edge in (slice(0, ph), slice(padded.shape[axis] - ph, None)):
        padded[_spatial_index(axis, edge, every)] = 0
    for edge in (slice(0, pw), slice(padded.shape[axis + 1] - pw, None)):
        padded[_spatial_index(axis, every, edge)] = 0


def unpad2d(x: np.ndarray, padding, channels_last: bool = False) -> np.ndarray:
    """Inverse of `pad2d` on the padded layout: drop pH rows and pW columns on each side (a view)."""
    ph, pw = pair(padding)
    axis = 1 if channels_last else 2
    h, w = x.shape[axis : axis + 2]
    return x[_spatial_index(axis, slice(ph, h - ph), slice(pw, w - pw))]


# --------------------------------------------------------------------------- windowing


def windows(x: np.ndarray, kernel, stride, channels_last: bool = False,
            writeable: bool = False) -> np.ndarray:
    """Strided view of every window; the two window axes follow the two spatial axes. No copy.

    NCHW:          (N, C, H, W) -> (N, C, H_out, W_out, kH, kW),
                   view[n, c, i, j, m, q] = x[n, c, i*sH + m, j*sW + q];
    channels_last: (N, H, W, C) -> (N, H_out, W_out, kH, kW, C),
                   view[n, i, j, m, q, c] = x[n, i*sH + m, j*sW + q, c];
    with H_out = floor((H - kH) / sH) + 1 (rows left over at the bottom are not read).
    A `writeable` view writes through to x (the adjoint uses one).
    """
    kh, kw = pair(kernel)
    sh, sw = pair(stride)
    axis = 1 if channels_last else 2  # first spatial axis
    h, w = x.shape[axis : axis + 2]
    s_row, s_col = x.strides[axis : axis + 2]
    return as_strided(
        x,
        shape=(*x.shape[:axis], (h - kh) // sh + 1, (w - kw) // sw + 1, kh, kw,
               *x.shape[axis + 2 :]),
        strides=(*x.strides[:axis], s_row * sh, s_col * sw, s_row, s_col,
                 *x.strides[axis + 2 :]),
        writeable=writeable,
    )


def windows_backward(dwin: np.ndarray, x_shape, stride, channels_last: bool = False,
                     out: np.ndarray | None = None) -> np.ndarray:
    """Adjoint of `windows`: sum window gradients back onto the image.

    dwin: the shape `windows` gives for an input of `x_shape` -> dx: `x_shape`, where
    `dx[n, c, i*sH + m, j*sW + q] += dwin[n, c, i, j, m, q]` (NCHW; likewise channels-last).
    `out`: an array of `x_shape` to write dx into (its contents are replaced), or None.

    NCHW, one strided addition per kernel offset (`windows_adjoint`), in runs of W_out values.
    Channels-last, one addition per class of windows that share no pixel: windows (i, j) and
    (i', j') with i ≡ i' (mod ⌈kH/sH⌉) and j ≡ j' (mod ⌈kW/sW⌉) are disjoint, so a class adds
    whole windows at once, in runs of kW*C values (kH*kW additions for stride 1, as many as
    offsets, but each with runs kW times longer; a single copy when windows do not overlap).
    """
    axis = 1 if channels_last else 2
    lead = (slice(None),) * (axis + 2)  # batch, (channels,) H_out, W_out
    kernel = dwin.shape[axis + 2 : axis + 4]
    dx = workspace.empty(x_shape, dwin.dtype) if out is None else out
    if not channels_last:
        windows_adjoint(lambda m, q, out=None: _into(dwin[lead + (m, q)], out), dx, kernel,
                        stride)
        return dx
    (kh, kw), (sh, sw) = kernel, pair(stride)
    classes_h, classes_w = -(-kh // sh), -(-kw // sw)
    dx_win = _cleared_windows(dx, kernel, stride, channels_last)
    for r in range(classes_h):
        for s in range(classes_w):
            select = (slice(None), slice(r, None, classes_h), slice(s, None, classes_w))
            if classes_h == classes_w == 1:  # no pixel lies in two windows
                dx_win[select] = dwin[select]
            else:
                dx_win[select] += dwin[select]
    return dx


def windows_adjoint(offset_gradient, dx: np.ndarray, kernel, stride,
                    channels_last: bool = False) -> None:
    """`windows_backward` with the window gradients given one kernel offset at a time.

    `offset_gradient(m, q, out=None)` returns the gradient of every window at its offset
    (m, q), shaped like `windows(x)[..., m, q, ...]` (or broadcasting to it): (N, C, H_out,
    W_out), or (N, H_out, W_out, C) channels-last; given `out` (such a view of dx), it writes
    the gradient there instead, like a ufunc. Fills dx, shaped like x (its contents are
    replaced): `dx[..., i*sH + m, j*sW + q, ...] = Σ offset_gradient(m, q)[..., i, j, ...]`,
    one strided slice addition per kernel offset, kH*kW of them, no per-pixel loop. Where
    windows do not overlap (stride >= kernel), each offset's gradient is written in place.
    """
    (kh, kw), (sh, sw) = pair(kernel), pair(stride)
    axis = 1 if channels_last else 2
    dx_win = _cleared_windows(dx, kernel, stride, channels_last)
    lead = (slice(None),) * (axis + 2)
    for m in range(kh):
        for q in range(kw):
            target = dx_win[lead + (m, q)]
            if sh >= kh and sw >= kw:  # no pixel lies in two windows
                offset_gradient(m, q, out=target)
            else:
                target += offset_gradient(m, q)


def _into(values: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """`values`, or `out` with values copied into it (an `offset_gradient` of values at hand)."""
    if out is None:
        return values
    out[...] = values
    return out


def _cleared_windows(dx: np.ndarray, kernel, stride, channels_last: bool) -> np.ndarray:
    """The writeable `windows` of dx, after zeroing dx unless the windows tile it exactly."""
    (kh, kw), (sh, sw) = pair(kernel), pair(stride)
    axis = 1 if channels_last else 2
    h, w = dx.shape[axis : axis + 2]
    if not ((sh, sw) == (kh, kw) and h % kh == 0 and w % kw == 0):
        dx[...] = 0
    return windows(dx, kernel, stride, channels_last, writeable=True)


# --------------------------------------------------------------------------- convolution


def columns_channels_last(c_in: int, kw: int, w_out: int) -> bool:
    """The column layout a convolution uses: True for channels-last, False for NCHW.

    The im2col copy moves contiguous runs: channels-last, a kernel row of kW*C_in values;
    from NCHW, an output row of W_out pixels. The longer run wins: many input channels go
    channels-last, the first layer (1 to 3 channels) goes NCHW.
    """
    return kw * c_in >= w_out


def _weight_matrix(w: np.ndarray, channels_last: bool) -> np.ndarray:
    """(C_out, C_in, kH, kW) -> (C_out, K), K ordered as the columns: (kH, kW, C_in) or (C_in, kH, kW)."""
    return (w.transpose(0, 2, 3, 1) if channels_last else w).reshape(w.shape[0], -1)


def im2col(x_pad: np.ndarray, kernel, stride, channels_last: bool) -> np.ndarray:
    """The column matrix of a convolution, with a last column of ones for the bias.

    x_pad: the padded input from `pad2d`, (N, H, W, C_in) channels-last or (N, C_in, H, W)
    -> cols: (N*H_out*W_out, K + 1), K = C_in*kH*kW, where row (n, i, j) holds the window of
    output pixel (i, j) of image n, then a 1. Channels-last, the K columns run over (m, q, c)
    and cols is stored row-major; otherwise they run over (c, m, q) and cols is stored
    column-major (its transpose is the contiguous array). One copy from `windows` either way.
    """
    win = windows(x_pad, kernel, stride, channels_last)
    axis = 1 if channels_last else 2  # first spatial axis
    rows = win.shape[0] * win.shape[axis] * win.shape[axis + 1]  # N*H_out*W_out
    k = win.size // rows  # C_in*kH*kW
    if channels_last:  # (N, H_out, W_out, kH, kW, C_in)
        cols = workspace.empty((rows, k + 1), x_pad.dtype)
        cols[:, :-1].reshape(win.shape)[...] = win  # a view: rows stay whole
        cols[:, -1] = 1
        return cols
    win = win.transpose(1, 4, 5, 0, 2, 3)  # (C_in, kH, kW, N, H_out, W_out)
    cols_t = workspace.empty((k + 1, rows), x_pad.dtype)
    cols_t[:-1].reshape(win.shape)[...] = win
    cols_t[-1] = 1
    return cols_t.T


# Bytes of one column matrix: a larger batch is convolved in chunks of whole images whose
# columns fit (the column matrix is C_in*kH*kW times the input; unchunked it would set the
# memory peak of a training step). With a batch split over two cores (cnnumpy.parallel),
# 4 MiB per core measured faster than 8 and kept the step's peak below PyTorch's.
COLUMNS_BYTES = 4 * 2**20


def batch_blocks(n: int, bytes_per_image: int, budget: int) -> list[slice]:
    """Slices of range(n), each of as many images as fit in `budget` bytes (at least one)."""
    step = max(1, budget // max(bytes_per_image, 1))
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]


def image_chunks(x_pad: np.ndarray, kernel, stride, channels_last: bool) -> list[slice]:
    """Slices of the batch axis whose `im2col` columns take at most `COLUMNS_BYTES` each."""
    per_image = windows(x_pad[:1], kernel, stride, channels_last).size * x_pad.itemsize
    return batch_blocks(x_pad.shape[0], per_image, COLUMNS_BYTES)


def conv2d_forward(x, w, b, stride=1, padding=0, channels_last=None):
    """Cross-correlation of x with w plus bias, as one matrix product (see `layers.Conv2D`).

    x: (N, C_in, H, W), w: (C_out, C_in, kH, kW), b: (C_out,) -> out: (N, C_out, H_out, W_out).
    With the column matrix `cols` of `im2col` (ones in its last column) and w_mat the weights as
    a (C_out, K) matrix with b appended as a last column, out = cols · w_matᵀ: rows (n, i, j),
    i.e. the output directly in channels-last memory (computed for `image_chunks` of the
    batch in turn). `channels_last` chooses the column layout (None: by
    `columns_channels_last`). The cache keeps the padded input, not the columns (C_in*kH*kW
    times larger); backward copies the columns again.
    """
    c_out, c_in, kh, kw = w.shape
    if channels_last is None:
        (_, pw), (_, sw) = pair(padding), pair(stride)
        channels_last = columns_channels_last(c_in, kw, (x.shape[3] + 2 * pw - kw) // sw + 1)
    x_pad = pad2d(x, padding, channels_last)
    axis = 1 if channels_last else 2
    h_out, w_out = windows(x_pad, (kh, kw), stride, channels_last).shape[axis : axis + 2]
    w_mat = np.concatenate([_weight_matrix(w, channels_last), b[:, None]], axis=1)
    out = workspace.empty((x.shape[0], h_out, w_out, c_out), x.dtype)
    for chunk in image_chunks(x_pad, (kh, kw), stride, channels_last):
        # (rows, C_out); the columns are let go at once, for the next chunk to reuse
        np.matmul(im2col(x_pad[chunk], (kh, kw), stride, channels_last), w_mat.T,
                  out=out[chunk].reshape(-1, c_out))
    cache = (x_pad, w, stride, padding, channels_last)
    return to_nchw(out), cache


def conv2d_backward(dout, cache, input_grad=True):
    """Gradients of a convolution: dout (N, C_out, H_out, W_out) -> (dx, dw, db).

    With dout_rows the (N*H_out*W_out, C_out) matrix of dout (channels-last memory):
    [dw_mat | db]ᵀ = colsᵀ · dout_rows (the ones column of cols sums dout into db), and
    dx = col2im(dout_rows · w_mat): the column gradient is summed back onto the padded input
    by `windows_backward`. Chunk by chunk of images, as the forward pass; within a chunk the
    columns are let go before the column gradient is made (which then takes their memory, see
    `cnnumpy.workspace`). colsᵀ · dout_rows rather than dout_rowsᵀ · cols: with the NCHW
    columns of a first layer (colsᵀ contiguous) OpenBLAS ran it 1.4 times faster.
    With input_grad=False, dx is None and neither dout_rows · w_mat nor col2im is computed
    (a model's first layer: nothing needs the gradient of the images).
    """
    x_pad, w, stride, padding, channels_last = cache
    c_out, c_in, kh, kw = w.shape
    n, _, h_out, w_out = dout.shape
    dout = to_channels_last(dout)  # (N, H_out, W_out, C_out)
    w_mat = _weight_matrix(w, channels_last)
    dx_pad = workspace.empty_like(x_pad) if input_grad else None

    def chunk_gradients(chunk: slice) -> np.ndarray:
        """[dw_mat | db] of a chunk of images, and their dx_pad (when input_grad). Its arrays
        are let go on return, so that the next chunk reuses their memory."""
        dout_rows = dout[chunk].reshape(-1, c_out)
        cols = im2col(x_pad[chunk], (kh, kw), stride, channels_last)
        # (K + 1, C_out): rows (m, q, c) channels-last, else (c, m, q); then the bias
        grad = cols.T @ dout_rows
        if not input_grad:
            return grad
        del cols
        if channels_last:
            dcols = workspace.empty((len(dout_rows), w_mat.shape[1]), dout.dtype)
            np.matmul(dout_rows, w_mat, out=dcols)  # (rows, C_in*kH*kW)
            dwin = dcols.reshape(-1, h_out, w_out, kh, kw, c_in)
        else:
            dcols_t = workspace.empty((w_mat.shape[1], len(dout_rows)), dout.dtype)
            np.matmul(w_mat.T, dout_rows.T, out=dcols_t)  # (C_in*kH*kW, rows)
            dwin = dcols_t.reshape(c_in, kh, kw, -1, h_out, w_out).transpose(3, 0, 4, 5, 1, 2)
        windows_backward(dwin, dx_pad[chunk].shape, stride, channels_last, out=dx_pad[chunk])
        return grad

    chunks = image_chunks(x_pad, (kh, kw), stride, channels_last)
    grad = sum(chunk_gradients(chunk) for chunk in chunks)  # [dw_mat | db]
    if channels_last:
        dw = grad[:-1].reshape(kh, kw, c_in, c_out).transpose(3, 2, 0, 1)
    else:
        dw = grad[:-1].reshape(c_in, kh, kw, c_out).transpose(3, 0, 1, 2)
    dw, db = np.ascontiguousarray(dw), grad[-1].copy()
    if not input_grad:
        return None, dw, db
    dx = unpad2d(dx_pad, padding, channels_last)
    return (to_nchw(dx) if channels_last else dx), dw, db


# --------------------------------------------------------------------------- pooling

# Bytes of input pooled at a time: the several passes over the kernel offsets then re-read
# data that is still in the cache.
POOL_BLOCK_BYTES = 2 * 2**20


def maxpool2d(x, pool, stride):
    """Maximum of each window, without the offsets backward needs (inference):
    (N, C, H, W) -> (N, C, H_out, W_out). See `maxpool2d_forward`."""
    out, _ = _max_scan(x, pool, stride, offsets=False)
    return to_nchw(out)


def maxpool2d_forward(x, pool, stride):
    """Maximum of each window (see `layers.MaxPool2D`): (N, C, H, W) -> (N, C, H_out, W_out).

    A running maximum over the kH*kW kernel offsets of the channels-last windows. The cache
    keeps, per window, the offset k = m*kW + q of its first maximum in row-major order (only a
    strictly greater value moves it), so that backward routes each window's gradient to
    exactly one input. As k grows along the scan, "k where greater, else the old offset" is
    max(old offset, k·greater): integer arithmetic, no masked writes.
    """
    out, first = _max_scan(x, pool, stride, offsets=True)
    return to_nchw(out), (first, x.shape, pair(pool), stride)


def _max_scan(x, pool, stride, offsets: bool):
    """(out, first): the running maximum (N, H_out, W_out, C) and, if `offsets`, the offset
    of each window's first maximum (else None), in blocks of `POOL_BLOCK_BYTES` of images."""
    kh, kw = pair(pool)
    win = windows(x.transpose(0, 2, 3, 1), pool, stride, channels_last=True)
    out = workspace.empty(win.shape[:3] + win.shape[5:], x.dtype)  # (N, H_out, W_out, C)
    first = workspace.empty(out.shape, np.min_scalar_type(kh * kw - 1)) if offsets else None

    def scan(images: slice) -> None:
        best = out[images]
        best[...] = win[images, :, :, 0, 0, :]
        if offsets:
            best_offset = first[images]
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
    return out, first


def maxpool2d_backward(dout, cache):
    """Route each window's gradient to its (first) maximum; overlapping windows accumulate."""
    first, (n, c, h, w), (kh, kw), stride = cache
    dout = to_channels_last(dout)  # (N, H_out, W_out, C), read once per kernel offset
    dx = workspace.empty((n, h, w, c), dout.dtype)

    def route(images: slice) -> None:
        """dx of a block of images: at each kernel offset, the gradient of the windows whose
        first maximum lies there."""
        def offset_gradient(m, q, out=None):
            return np.multiply(dout[images], first[images] == m * kw + q, out=out)

        windows_adjoint(offset_gradient, dx[images], (kh, kw), stride, channels_last=True)

    for images in batch_blocks(n, dx[0].nbytes, POOL_BLOCK_BYTES):
        route(images)
    return to_nchw(dx)


def avgpool2d_forward(x, pool, stride):
    """Mean of each window (see `layers.AvgPool2D`): (N, C, H, W) -> (N, C, H_out, W_out)."""
    win = windows(x.transpose(0, 2, 3, 1), pool, stride, channels_last=True)
    out = win.mean(axis=(3, 4), dtype=x.dtype)  # (N, H_out, W_out, C)
    return to_nchw(out), (x.shape, pair(pool), stride)


def avgpool2d_backward(dout, cache):
    """Each input of a window receives dout / (kH*kW) from it; overlaps accumulate."""
    (n, c, h, w), (kh, kw), stride = cache
    dout = dout.transpose(0, 2, 3, 1)  # (N, H_out, W_out, C)
    share = dout.dtype.type(1 / (kh * kw))
    dx = workspace.empty((n, h, w, c), dout.dtype)
    windows_adjoint(lambda m, q, out=None: np.multiply(dout, share, out=out), dx, (kh, kw),
                    stride, channels_last=True)
    return to_nchw(dx)


# --------------------------------------------------------------------------- elementwise and dense


def matmul_long_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a · b, computed as (bᵀ · aᵀ)ᵀ (an F-ordered result) when the output is wider than tall.

    Threaded OpenBLAS can be many times slower on a short, wide output (e.g. a batch of 64
    rows by 512 features) than on its transpose, when the cores are busy.
    """
    if b.shape[1] > a.shape[0]:
        return (b.T @ a.T).T
    return a @ b


def relu(x):
    """max(x, 0), elementwise, in x's memory layout."""
    return np.maximum(x, 0, out=workspace.empty_like(x))


def relu_forward(x):
    """`relu(x)`; the cache is the mask of positive inputs."""
    positive = np.greater(x, 0, out=workspace.empty_like(x, bool))
    return relu(x), positive


def relu_backward(dout, positive):
    """dout where the input was positive, 0 elsewhere (the derivative at 0 is taken as 0)."""
    return np.multiply(dout, positive, out=workspace.empty_like(dout))


def flatten_forward(x):
    """(N, d1, d2, ...) -> (N, d1*d2*...); the cache is the input shape."""
    return x.reshape(x.shape[0], -1), x.shape


def flatten_backward(dout, x_shape):
    """Reshape the gradient back to the input's shape."""
    return dout.reshape(x_shape)


def linear_forward(x, w, b):
    """x · wᵀ + b: x (N, in), w (out, in), b (out,) -> (N, out)."""
    out = matmul_long_rows(x, w.T)
    out += b
    return out, (x, w)


def linear_backward(dout, cache, input_grad=True):
    """dx = dout · w, dw = doutᵀ · x, db = Σ_n dout: dout (N, out) -> (dx, dw, db).

    With input_grad=False, dx is None and not computed.
    """
    x, w = cache
    dx = matmul_long_rows(dout, w) if input_grad else None
    return dx, dout.T @ x, dout.sum(axis=0)
