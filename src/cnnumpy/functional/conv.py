"""Convolution as matrix products: im2col columns times the weight matrix, or for stride 1
one product per kernel row (see `cnnumpy.layers.Conv2D` for the formula and shapes)."""

from __future__ import annotations

import numpy as np

from .. import workspace
from .channelwise import bias_vector, channelwise, column_sums
from .linear import relu as relu_into
from .windowing import (batch_blocks, col2im, pad2d, pair, to_channels_last, to_nchw, unpad2d,
                        windows)
from .winograd import conv2d_winograd


def use_channels_last_columns(c_in: int, kw: int, w_out: int) -> bool:
    """The column layout a convolution uses: True for channels-last, False for NCHW.

    The im2col copy moves contiguous runs: channels-last, a kernel row of kW*C_in values;
    from NCHW, an output row of W_out pixels. The longer run wins: many input channels go
    channels-last, the first layer (1 to 3 channels) goes NCHW.
    """
    return kw * c_in >= w_out


def _weight_matrix(w: np.ndarray, channels_last: bool) -> np.ndarray:
    """(C_out, C_in, kH, kW) -> (C_out, K), K ordered as the columns: (kH, kW, C_in) or (C_in, kH, kW)."""
    return (w.transpose(0, 2, 3, 1) if channels_last else w).reshape(w.shape[0], -1)


def _weight_matrix_with_bias(w: np.ndarray, b: np.ndarray, channels_last: bool) -> np.ndarray:
    """[w_mat | b]: (C_out, K + 1), the weight matrix of `_weight_matrix` and the bias as its
    last column, made in one copy (a 512-channel 3x3 kernel is 9 MiB)."""
    arranged = w.transpose(0, 2, 3, 1) if channels_last else w
    w_mat = np.empty((w.shape[0], w[0].size + 1), w.dtype)
    w_mat[:, :-1].reshape(arranged.shape)[...] = arranged  # a view: rows stay whole
    w_mat[:, -1] = b
    return w_mat


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


def image_chunks(x_pad: np.ndarray, kernel, stride, channels_last: bool,
                 weight_bytes: int = 0) -> list[slice]:
    """Slices of the batch axis whose `im2col` columns take at most `COLUMNS_BYTES` each, or
    twice `weight_bytes` where that is more. OpenBLAS packs the whole weight matrix for every
    product, so a chunk much smaller than the weights spends its time packing: ResNet-18's
    512-channel convolution on 8 images of 7x7 (0.9 MB of columns an image, 9 MB of weights)
    took 28 ms in chunks of 4 images against 25.5 in one (one thread)."""
    per_image = windows(x_pad[:1], kernel, stride, channels_last).size * x_pad.itemsize
    return batch_blocks(x_pad.shape[0], per_image, max(COLUMNS_BYTES, 2 * weight_bytes))


def conv2d_forward(x, w, b, stride=1, padding=0, channels_last=None):
    """Cross-correlation of x with w plus bias, as matrix products (see `layers.Conv2D`).

    x: (N, C_in, H, W), w: (C_out, C_in, kH, kW), b: (C_out,) or None (no bias)
    -> out: (N, C_out, H_out, W_out).
    With the column matrix `cols` of `im2col` (ones in its last column) and w_mat the weights as
    a (C_out, K) matrix with b appended as a last column, out = cols · w_matᵀ: rows (n, i, j),
    i.e. the output directly in channels-last memory (computed for `image_chunks` of the
    batch in turn). `channels_last` chooses the column layout (None: by
    `use_channels_last_columns`). Stride-1 convolutions with channels-last columns go
    another way where that was measured faster (`_way`): 3x3 kernels with many channels
    (`_by_winograd`) by `conv2d_winograd` (2.25 times fewer multiplications), others with
    small kernel rows (`_by_kernel_rows`) by `conv2d_by_kernel_rows` (the same sums, a third
    of the copying for 3x3 kernels, and the padding implied: no padded copy of x).
    The cache keeps the padded input that im2col and Winograd read, or x itself by kernel
    rows (`conv2d_holds_input`), not the columns (C_in*kH*kW times larger); backward makes the
    columns again where it needs them.
    """
    channels_last = _column_layout(x, w, stride, padding, channels_last)
    out, x_pad = _convolve(x, w, b, stride, padding, channels_last)
    if x_pad is None:  # by kernel rows: x itself, its padding implied
        return out, (x, w, stride, padding, channels_last, False)
    return out, (x_pad, w, stride, padding, channels_last, True)


def conv2d_holds_input(x, w, stride=1, padding=0, channels_last=None) -> str | None:
    """Whether the cache of `conv2d_forward(x, w, ...)` holds x itself or a view of it, and
    how it reads x: "channels-last" by kernel rows, "as given" without padding (im2col or
    Winograd of x), None when it holds a padded copy. The caller decides whether x may be
    held (`layers.Conv2D` passes a copy, in that layout, of an input nothing hands over)."""
    channels_last = _column_layout(x, w, stride, padding, channels_last)
    if _way(x.shape, w, stride, padding, channels_last) == "kernel rows":
        return "channels-last"
    return "as given" if pair(padding) == (0, 0) else None


def conv2d(x, w, b, stride=1, padding=0, channels_last=None, relu=False):
    """The output of `conv2d_forward` without a cache, for inference (and for an input
    gradient that is itself a convolution). relu=True: max(out, 0) as well, in place (by
    kernel rows, a chunk of images at a time while its outputs are in the cache), for a
    ReLU that follows."""
    channels_last = _column_layout(x, w, stride, padding, channels_last)
    out, _ = _convolve(x, w, b, stride, padding, channels_last, relu)
    return out


def _way(x_shape, w, stride, padding, channels_last: bool) -> str:
    """How `conv2d_forward` convolves an NCHW input of `x_shape`: "winograd" or "im2col" (of
    a padded copy), or "kernel rows" (the padding implied)."""
    padded = _padded_shape(x_shape, padding)
    if channels_last and _by_winograd(padded, w, stride):
        return "winograd"
    if channels_last and _by_kernel_rows(padded, w, stride):
        return "kernel rows"
    return "im2col"


def _convolve(x, w, b, stride, padding, channels_last: bool, relu: bool = False):
    """(out, x_pad): the convolution of `conv2d_forward` (its way chosen by `_way`), with
    relu=True then max(out, 0) in place, and the padded input it read (None by kernel rows,
    which read x with its padding implied, `_fill_kernel_rows`: no padded copy. Measured
    (one thread, 64 images of 32x32x16 float32): the padded copy took 0.2-1 ms of a 5-6 ms
    convolution)."""
    c_out, c_in, kh, kw = w.shape
    way = _way(x.shape, w, stride, padding, channels_last)
    if way == "kernel rows":
        return conv2d_by_kernel_rows(to_channels_last(x), w, b, padding, relu), None
    x_pad = pad2d(x, padding, channels_last)
    if way == "winograd":
        out = conv2d_winograd(x_pad, w, b)
        return (relu_into(out, out=out) if relu else out), x_pad
    if b is None:  # a zero bias column: the columns keep one layout with or without a bias
        b = np.zeros(c_out, dtype=w.dtype)
    axis = 1 if channels_last else 2
    h_out, w_out = windows(x_pad, (kh, kw), stride, channels_last).shape[axis : axis + 2]
    w_mat = _weight_matrix_with_bias(w, b, channels_last)
    out = workspace.empty((x.shape[0], h_out, w_out, c_out), x.dtype)
    for chunk in image_chunks(x_pad, (kh, kw), stride, channels_last, w_mat.nbytes):
        # (rows, C_out); the columns are let go at once, for the next chunk to reuse
        np.matmul(im2col(x_pad[chunk], (kh, kw), stride, channels_last), w_mat.T,
                  out=out[chunk].reshape(-1, c_out))
    out = to_nchw(out)
    return (relu_into(out, out=out) if relu else out), x_pad


def _padded_shape(x_shape, padding) -> tuple[int, int, int, int]:
    """(N, H + 2pH, W + 2pW, C_in): the channels-last shape of an NCHW input padded."""
    (ph, pw), (n, c, h, width) = pair(padding), x_shape
    return n, h + 2 * ph, width + 2 * pw, c


def _padded_shape_only(x, padding, channels_last: bool) -> np.ndarray:
    """A stand-in for `pad2d(x, padding, channels_last)` where only its shape and dtype are
    read: a read-only array of them with no memory of its own (all strides 0)."""
    n, h_pad, w_pad, c = _padded_shape(x.shape, padding)
    shape = (n, h_pad, w_pad, c) if channels_last else (n, c, h_pad, w_pad)
    return np.broadcast_to(np.zeros((), x.dtype), shape)


def _column_layout(x, w, stride, padding, channels_last) -> bool:
    """channels_last as given, or by `use_channels_last_columns` when None."""
    if channels_last is not None:
        return channels_last
    (_, pw), (_, sw), kw = pair(padding), pair(stride), w.shape[3]
    return use_channels_last_columns(w.shape[1], kw, (x.shape[3] + 2 * pw - kw) // sw + 1)


# Bytes of the kernel-row matrix of `conv2d_by_kernel_rows` for one chunk of images: 1-2 MiB
# measured faster than 4-8 (ResNet-20's 3x3 convolutions, one thread).
ROWS_BYTES = 2 * 2**20
# Its products go image by image, and OpenBLAS packs a kernel row's weights (kW·C_in x C_out)
# for each: cheap while they stay in the L2 cache. Measured (one thread), kernel rows against
# im2col: ResNet-20's 16-64 channels (at most 48 KiB) 5-20% faster, 64-128 channels at 28x28
# to 56x56 (48-192 KiB) even, 512 channels at 7x7 (3 MiB) 40% slower.
ROWS_WEIGHT_BYTES = 256 * 2**10
# The weight gradient by kernel rows makes one product per image, of kW·C_in x outputs by
# outputs x C_out: with few outputs an image (2x2 to 7x7) its inner dimension is too short,
# and it was 1.1-4.8 times slower than im2col's; at 8x8 and more (ResNet-20's), faster.
ROWS_GRADIENT_OUTPUTS = 64


# Where `conv2d_forward` goes by Winograd (`_by_winograd`): at least WINOGRAD_CHANNELS input
# and output channels, and WINOGRAD_TILES 2x2 output tiles in the batch. Measured (one
# thread, float32, interleaved, medians of 9) against the direct convolution, Winograd took:
# 64 channels at 56x56 (batch 16) 0.98 times as long, at 8x8 (batch 128) 1.17; 128 channels
# at 28x28 (batch 16) 0.80, at 8x8 (batch 64) 0.82; 256 at 14x14 0.57-0.64; 512 at 7x7
# (batch 16, 256 tiles) 0.80-0.83, at 4x4 (batch 8, 32 tiles: the kernels' transform,
# 16·C_in·C_out values, is most of it) 1.06. `benchmarks/conv_shapes.py` shows it per model.
WINOGRAD_CHANNELS = 128
WINOGRAD_TILES = 128


def _by_winograd(padded_shape, w, stride) -> bool:
    """Whether `conv2d_forward` takes a channels-last convolution of a padded input of
    `padded_shape` (N, H_pad, W_pad, C_in) by `conv2d_winograd`: a 3x3 kernel, stride 1, at
    least WINOGRAD_CHANNELS input and output channels, and at least WINOGRAD_TILES 2x2 output
    tiles in the batch (the kernels' transform is paid once a call, the products once a
    tile)."""
    c_out, c_in, kh, kw = w.shape
    n, h_pad, w_pad = padded_shape[:3]
    tiles = n * ((h_pad - 1) // 2) * ((w_pad - 1) // 2)  # ceil(H_out / 2), H_out = H_pad - 2
    return ((kh, kw) == (3, 3) and pair(stride) == (1, 1)
            and min(c_in, c_out) >= WINOGRAD_CHANNELS and tiles >= WINOGRAD_TILES)


def _by_kernel_rows(padded_shape, w, stride) -> bool:
    """Whether `conv2d_forward` takes a channels-last convolution of a padded input of
    `padded_shape` (N, H_pad, W_pad, C_in) by kernel rows: stride 1, more than one kernel
    row, a kernel row's weights within ROWS_WEIGHT_BYTES, and outputs of at least 2x2 (a 1x1
    output makes each image's product a matrix-vector product, measured twice as slow as
    im2col's one product)."""
    c_out, c_in, kh, kw = w.shape
    outputs = (padded_shape[1] - kh + 1) * (padded_shape[2] - kw + 1)
    return (pair(stride) == (1, 1) and kh > 1 and outputs >= 4
            and kw * c_in * c_out * w.itemsize <= ROWS_WEIGHT_BYTES)


def conv2d_by_kernel_rows(x, w, b, padding=0, relu=False):
    """A stride-1 convolution of a channels-last input as kH products, one per kernel row,
    with no column matrix and no padded copy of the input.

    x: (N, H, W, C_in), w: (C_out, C_in, kH, kW), b: (C_out,) or None, padding: the zeros
    (pH, pW) around x -> out: (N, C_out, H_out, W_out), an NCHW view of channels-last memory,
    H_out = H + 2pH - kH + 1. With x_pad the padded input and the row matrix
    R[n, r, j] = (x_pad[n, r, j + q, c] for q < kW, c < C_in), kW·C_in values per pixel of
    every padded row r (kW shifted copies of the input instead of im2col's kH·kW), the output
    rows (i, j) of image n are

        out[n, i, j] = Σ_m R[n, i + m, j] · W_m + b,   W_m[(q, c), o] = w[o, c, m, q],

    and R[n, i + m, j] for all (i, j) is one contiguous block of R[n] (rows m·W_out on): kH
    matrix products over views, summed. Chunks of whole images keep R within ROWS_BYTES;
    R takes the zeros of the padding itself (`_kernel_row_buffer`). The bias, and with
    relu=True max(out, 0), go onto each chunk's outputs while they are in the cache.
    """
    n, h, width, c_in = x.shape
    ph, pw = pair(padding)
    c_out, _, kh, kw = w.shape
    h_pad, w_out = h + 2 * ph, width + 2 * pw - kw + 1
    h_out = h_pad - kh + 1
    w_rows = w.transpose(2, 3, 1, 0).reshape(kh, kw * c_in, c_out)  # W_m, m = 0 .. kH-1
    out = workspace.empty((n, h_out, w_out, c_out), x.dtype)
    chunks = batch_blocks(n, h_pad * w_out * kw * c_in * x.itemsize, ROWS_BYTES)
    step = chunks[0].stop if chunks else 0  # images in a chunk; the last may have fewer
    # one row matrix (step, H_pad, W_out, kW·C_in) and one product buffer (step, H_out·W_out,
    # C_out) for every chunk: the padding's zeros are written once, and each chunk makes
    # fewer NumPy calls (with the batch split over threads, each call on a large array lets
    # go of the interpreter's lock and takes it back)
    rows = _kernel_row_buffer(step, x.shape[1:], kw, (ph, pw), x.dtype)
    terms = workspace.empty((step, h_out * w_out, c_out), x.dtype) if kh > 1 else None
    bias = None if b is None else bias_vector(b, c_out, x.dtype)
    zeros = np.zeros(c_out, x.dtype) if relu else None
    for chunk in chunks:
        images = chunk.stop - chunk.start
        chunk_rows = _fill_kernel_rows(x[chunk], rows[:images], kw, (ph, pw))
        total = out[chunk].reshape(images, h_out * w_out, c_out)
        for m in range(kh):
            block = chunk_rows[:, m * w_out : m * w_out + h_out * w_out]  # R[n, i + m, j]
            np.matmul(block, w_rows[m], out=total if m == 0 else terms[:images])
            if m:
                total += terms[:images]
        flat = total.reshape(-1, c_out)  # the chunk's outputs, a row of C_out a pixel
        if bias is not None:
            channelwise(np.add, flat, bias, flat)
        if relu:
            channelwise(np.maximum, flat, zeros, flat)
    return to_nchw(out)


def _kernel_row_buffer(images, image_shape, kw, padding, dtype) -> np.ndarray:
    """Memory for the row matrix R of `conv2d_by_kernel_rows` for `images` images of
    `image_shape` (H, W, C_in) padded with (pH, pW) zeros, R[n, r·W_out + j] =
    (x_pad[n, r, j + q, c] for q < kW, c < C_in): (images, H_pad, W_out, kW·C_in), with
    H_pad = H + 2pH, W_out = W + 2pW - kW + 1 and the values that come from the padding
    already zero (the pH rows above and below, and the pW columns on each side, whose
    inside values `_fill_kernel_rows` writes)."""
    h, width, c_in = image_shape
    ph, pw = padding
    w_out = width + 2 * pw - kw + 1
    rows = workspace.empty((images, h + 2 * ph, w_out, kw * c_in), dtype)
    whole = max(width - kw + 1, 0)  # columns pW .. pW + whole - 1 read no padding
    rows[:, :ph] = 0
    rows[:, ph + h :] = 0
    rows[:, :, :pw] = 0
    rows[:, :, pw + whole :] = 0
    return rows


def _fill_kernel_rows(x, rows, kw, padding) -> np.ndarray:
    """Write x's values into R's memory from `_kernel_row_buffer` (rows, for len(x) images)
    and return R as (N, H_pad·W_out, kW·C_in).

    The columns j whose pixels all lie inside x are one copy of x's 1 x kW `windows`: in
    channels-last memory the kW pixels from (i, j) on are kW·C_in consecutive values, which
    NumPy copies as one run (48 values with 16 channels) where copying shift by shift moves
    runs of C_in. Measured (one thread, 64 images of 34x34x16 float32): 0.65 ms against
    1.66. The pW columns on each side that reach into the padding take their inside values
    shift by shift, next to the buffer's zeros.
    """
    n, h, width, c_in = x.shape
    ph, pw = padding
    w_out = rows.shape[2]
    inside = rows[:, ph : ph + h]
    whole = max(width - kw + 1, 0)
    if whole:  # the 1 x kW windows of x, (N, H, whole, kW, C_in), into R's (kW, C_in) values
        target = inside[:, :, pw : pw + whole].reshape(n, h, whole, kw, c_in)
        target[...] = windows(x, (1, kw), 1, channels_last=True)[:, :, :, 0]
    for start, stop in ((0, min(pw, w_out)), (pw + whole, w_out)):
        for q in range(kw):  # output columns j in [lo, hi) read pixel j + q - pW of x
            lo, hi = max(start, pw - q), min(stop, width + pw - q)
            if lo < hi:
                inside[:, :, lo:hi, q * c_in : (q + 1) * c_in] = x[:, :, lo + q - pw : hi + q - pw]
    return rows.reshape(n, rows.shape[1] * w_out, kw * c_in)


def weight_gradient_by_kernel_rows(dout, x, kh, kw, padding=0):
    """(dw, db) of a convolution that `conv2d_by_kernel_rows` computed: dout (N, C_out, H_out,
    W_out), x (N, H, W, C_in) the channels-last input, `padding` its zeros (implied, as in
    forward) -> dw (C_out, C_in, kH, kW), db (C_out,).

    Kernel row m's weights W_m met the rows R[n, i + m, j], so dW_m = Σ_n R_m[n]ᵀ · dout[n],
    with R_m[n] the block of R[n] from row m·W_out on and dout[n] as (H_out·W_out, C_out)
    rows: one product per image and kernel row, batched (`np.matmul` over the images of a
    chunk), each small enough to stay in the cache. A chunk's row matrix and its products
    take at most ROWS_BYTES each. Measured (one thread, batch 64) against im2col's
    colsᵀ · dout: 5.8 against 11.2 ms at 16 channels (32x32), 4.3 against 6.3 at 32
    (16x16), 4.3 against 5.6 at 64 (8x8).
    """
    (ph, pw), (n, h, width, c_in) = pair(padding), x.shape
    h_pad = h + 2 * ph
    c_out, h_out, w_out = dout.shape[1], h_pad - kh + 1, width + 2 * pw - kw + 1
    rows_of_dout = to_channels_last(dout).reshape(n, h_out * w_out, c_out)
    dtype = np.result_type(x, dout)  # as im2col's product of the two
    grad = np.zeros((kh, kw * c_in, c_out), dtype)  # dW_m as ((q, c), o)
    # per image: its row matrix, and its share of each product's (images, kW·C_in, C_out)
    per_image = max(h_pad * w_out, c_out) * kw * c_in * dtype.itemsize
    chunks = batch_blocks(n, per_image, ROWS_BYTES)
    step = chunks[0].stop if chunks else 0  # images in a chunk (none for an empty batch)
    buffer = _kernel_row_buffer(step, x.shape[1:], kw, (ph, pw), x.dtype)
    for chunk in chunks:
        rows = _fill_kernel_rows(x[chunk], buffer[: chunk.stop - chunk.start], kw, (ph, pw))
        for m in range(kh):
            block = rows[:, m * w_out : m * w_out + h_out * w_out]
            grad[m] += np.matmul(block.transpose(0, 2, 1), rows_of_dout[chunk]).sum(axis=0)
    dw = np.ascontiguousarray(grad.reshape(kh, kw, c_in, c_out).transpose(3, 2, 0, 1))
    db = column_sums(rows_of_dout.reshape(-1, c_out), dtype)
    return dw, db


def _input_grad_as_convolution(w, stride, padding, dout_shape) -> bool:
    """Whether `conv2d_backward` makes dx by `input_gradient_by_convolution`. Its columns are
    kH·kW·C_out wide where col2im's are kH·kW·C_in, and col2im's strided additions cost
    most with few channels: measured (16-64 channels, 8x8 to 32x32 images, one thread) the
    convolution took 0.4-0.6 times as long when C_out = C_in. Not when the output is smaller
    than the kernel: the full correlation pads dout by kH - 1 - pH on each side, and a 7x7
    kernel on a 7x7 input (1x1 output) took 16 times as long as col2im."""
    (ph, pw), (kh, kw) = pair(padding), w.shape[2:]
    return (pair(stride) == (1, 1) and w.shape[0] <= w.shape[1] and ph < kh and pw < kw
            and dout_shape[2] >= kh and dout_shape[3] >= kw)


def input_gradient_by_convolution(dout, w, padding):
    """dx of a stride-1 convolution as a convolution of dout with the flipped kernel:

        dx[n, c, i, j] = Σ_o Σ_m Σ_q dout_pad[n, o, i + m, j + q] · W[o, c, kH-1-m, kW-1-q]

    where dout_pad is dout with kH-1-pH rows (kW-1-pW columns) of zeros on each side (the
    "full" correlation: every output that input pixel (i, j) fed). Shape: dout (N, C_out,
    H_out, W_out) -> dx (N, C_in, H, W), H = H_out + kH - 1 - 2pH.
    """
    (ph, pw), (kh, kw) = pair(padding), w.shape[2:]
    flipped = np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])  # (C_in, C_out, ..)
    return conv2d(dout, flipped, None, 1, (kh - 1 - ph, kw - 1 - pw))


def conv2d_backward(dout, cache, input_grad=True):
    """Gradients of a convolution: dout (N, C_out, H_out, W_out) -> (dx, dw, db).

    With dout_rows the (N*H_out*W_out, C_out) matrix of dout (channels-last memory):
    [dw_mat | db]ᵀ = colsᵀ · dout_rows (the ones column of cols sums dout into db), and
    dx = col2im(dout_rows · w_mat): the column gradient is summed back onto the padded input
    (`col2im`). Chunk by chunk of images (`image_chunks`); within a chunk the
    columns are let go before the column gradient is made (which then takes their memory, see
    `cnnumpy.workspace`). colsᵀ · dout_rows rather than dout_rowsᵀ · cols: with the NCHW
    columns of a first layer (colsᵀ contiguous) OpenBLAS ran it 1.4 times faster.
    With input_grad=False, dx is None and neither dout_rows · w_mat nor col2im is computed
    (a model's first layer: nothing needs the gradient of the images).

    Where kernel rows would serve forward (`_by_kernel_rows`, whether or not Winograd did)
    and the output has at least ROWS_GRADIENT_OUTPUTS pixels an image, dw and db go by kernel
    rows (`weight_gradient_by_kernel_rows`), with or without dx, and no columns are made.
    With stride 1 and no more output than input channels (a ResNet's convolutions), dx is
    computed as a convolution (`input_gradient_by_convolution`, which takes Winograd's way
    where forward would), 1.5-2.5 times faster than col2im there.
    """
    held, w, stride, padding, channels_last, padded = cache
    c_out, c_in, kh, kw = w.shape
    if input_grad and _input_grad_as_convolution(w, stride, padding, dout.shape):
        _, dw, db = conv2d_backward(dout, cache, input_grad=False)
        return input_gradient_by_convolution(dout, w, padding), dw, db
    # held: the padded input (channels-last, or NCHW) or, by kernel rows, x (NCHW)
    padded_shape = held.shape if padded else _padded_shape(held.shape, padding)
    by_rows = (channels_last and _by_kernel_rows(padded_shape, w, stride)
               and dout.shape[2] * dout.shape[3] >= ROWS_GRADIENT_OUTPUTS)
    if by_rows:
        dw, db = (weight_gradient_by_kernel_rows(dout, held, kh, kw) if padded else
                  weight_gradient_by_kernel_rows(dout, to_channels_last(held), kh, kw, padding))
        if not input_grad:
            return None, dw, db
    if padded:
        x_pad = held
    elif by_rows:  # col2im (dx) and the chunks need only the padded input's shape
        x_pad = _padded_shape_only(held, padding, channels_last)
    else:
        x_pad = pad2d(held, padding, channels_last)
    n, _, h_out, w_out = dout.shape
    dout = to_channels_last(dout)  # (N, H_out, W_out, C_out)
    w_mat = _weight_matrix(w, channels_last)
    dx_pad = workspace.empty_like(x_pad) if input_grad else None

    def chunk_gradients(chunk: slice) -> np.ndarray | None:
        """[dw_mat | db] of a chunk of images (None by kernel rows), and their dx_pad (when
        input_grad). Its arrays are let go on return, so that the next chunk reuses their
        memory."""
        dout_rows = dout[chunk].reshape(-1, c_out)
        grad = None
        if not by_rows:
            cols = im2col(x_pad[chunk], (kh, kw), stride, channels_last)
            # (K + 1, C_out): rows (m, q, c) channels-last, else (c, m, q); then the bias
            grad = cols.T @ dout_rows
            del cols
        if not input_grad:
            return grad
        if channels_last:
            dcols = workspace.empty((len(dout_rows), w_mat.shape[1]), dout.dtype)
            np.matmul(dout_rows, w_mat, out=dcols)  # (rows, C_in*kH*kW)
            dwin = dcols.reshape(-1, h_out, w_out, kh, kw, c_in)
        else:
            dcols_t = workspace.empty((w_mat.shape[1], len(dout_rows)), dout.dtype)
            np.matmul(w_mat.T, dout_rows.T, out=dcols_t)  # (C_in*kH*kW, rows)
            dwin = dcols_t.reshape(c_in, kh, kw, -1, h_out, w_out).transpose(3, 0, 4, 5, 1, 2)
        col2im(dwin, dx_pad[chunk].shape, stride, channels_last, out=dx_pad[chunk])
        return grad

    chunks = image_chunks(x_pad, (kh, kw), stride, channels_last, w_mat.nbytes)
    grads = [chunk_gradients(chunk) for chunk in chunks]
    if not by_rows:
        # [dw_mat | db]; an empty batch has no chunks, and zero gradients
        grad = sum(grads) if grads else np.zeros((w_mat.shape[1] + 1, c_out),
                                                 np.result_type(held, dout))
        if channels_last:
            dw = grad[:-1].reshape(kh, kw, c_in, c_out).transpose(3, 2, 0, 1)
        else:
            dw = grad[:-1].reshape(c_in, kh, kw, c_out).transpose(3, 0, 1, 2)
        dw, db = np.ascontiguousarray(dw), grad[-1].copy()
    if not input_grad:
        return None, dw, db
    dx = unpad2d(dx_pad, padding, channels_last)
    return (to_nchw(dx) if channels_last else dx), dw, db
