"""Pure array kernels: convolution, pooling, ReLU, flatten and linear, forward and backward.

Every kernel is a function of arrays and nothing else:

    out, cache = <op>_forward(x, ...)        # cache holds what backward needs
    dx, ... = <op>_backward(dout, cache)

The backward kernels return the exact derivatives of whatever scalar `dout` is the gradient
of; nothing is divided by the batch size here (the loss takes the batch mean, once).

Layout is NCHW, weights are (C_out, C_in, kH, kW), as in PyTorch. Kernels trust their callers:
shapes and dtypes are checked by the layers in `cnnumpy.layers`, whose docstrings hold the
formulas and `Shape:` blocks. Outputs keep the dtype of the inputs (float32 stays float32).

One windowing pair serves convolution and pooling:
`windows` is a strided view of every kH x kW window of an image, and `windows_backward` is its
adjoint: it adds each window's gradient back onto the pixels the window was read from.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided


def pair(value) -> tuple[int, int]:
    """`3 -> (3, 3)`, `(3, 2) -> (3, 2)`: the (height, width) form of a size argument."""
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


# --------------------------------------------------------------------------- windowing


def pad2d(x: np.ndarray, padding) -> np.ndarray:
    """Zero-pad the two spatial axes: (N, C, H, W) -> (N, C, H + 2pH, W + 2pW)."""
    ph, pw = pair(padding)
    if ph == 0 and pw == 0:
        return x
    n, c, h, w = x.shape
    padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    padded[:, :, ph : ph + h, pw : pw + w] = x
    return padded


def unpad2d(x: np.ndarray, padding) -> np.ndarray:
    """Inverse of `pad2d`: drop pH rows and pW columns on each side (a view)."""
    ph, pw = pair(padding)
    return x[:, :, ph : x.shape[2] - ph, pw : x.shape[3] - pw]


def windows(x: np.ndarray, kernel, stride) -> np.ndarray:
    """Read-only strided view of every window: (N, C, H, W) -> (N, C, H_out, W_out, kH, kW).

    `view[n, c, i, j, m, q] = x[n, c, i*sH + m, j*sW + q]`, with
    H_out = floor((H - kH) / sH) + 1 (rows left over at the bottom are not read). No copy.
    """
    kh, kw = pair(kernel)
    sh, sw = pair(stride)
    n, c, h, w = x.shape
    h_out = (h - kh) // sh + 1
    w_out = (w - kw) // sw + 1
    sn, sc, s_row, s_col = x.strides
    return as_strided(
        x,
        shape=(n, c, h_out, w_out, kh, kw),
        strides=(sn, sc, s_row * sh, s_col * sw, s_row, s_col),
        writeable=False,
    )


def windows_backward(dwin: np.ndarray, x_shape, stride) -> np.ndarray:
    """Adjoint of `windows`: sum window gradients back onto the image.

    dwin: (N, C, H_out, W_out, kH, kW) -> dx: `x_shape` = (N, C, H, W), where
    `dx[n, c, i*sH + m, j*sW + q] += dwin[n, c, i, j, m, q]`. Overlapping windows accumulate.
    One strided slice addition per kernel offset (m, q): kH*kW additions, no per-pixel loop.
    """
    sh, sw = pair(stride)
    _, _, h_out, w_out, kh, kw = dwin.shape
    dx = np.zeros(x_shape, dtype=dwin.dtype)
    for m in range(kh):
        for q in range(kw):
            dx[:, :, m : m + sh * h_out : sh, q : q + sw * w_out : sw] += dwin[:, :, :, :, m, q]
    return dx


# --------------------------------------------------------------------------- convolution


def conv2d_forward(x, w, b, stride=1, padding=0):
    """Cross-correlation of x with w plus bias, as one matrix product (see `layers.Conv2D`).

    x: (N, C_in, H, W), w: (C_out, C_in, kH, kW), b: (C_out,) -> out: (N, C_out, H_out, W_out).
    The windows of the padded input are copied into a column matrix (im2col) of shape
    (N*H_out*W_out, C_in*kH*kW) and multiplied by the flattened weights.
    """
    c_out, _, kh, kw = w.shape
    x_pad = pad2d(x, padding)
    win = windows(x_pad, (kh, kw), stride)  # (N, C_in, H_out, W_out, kH, kW), a view
    n, c_in, h_out, w_out = win.shape[:4]
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * h_out * w_out, c_in * kh * kw)
    out = cols @ w.reshape(c_out, -1).T + b  # (N*H_out*W_out, C_out)
    out = np.ascontiguousarray(out.reshape(n, h_out, w_out, c_out).transpose(0, 3, 1, 2))
    cache = (cols, w, x.shape, x_pad.shape, stride, padding)
    return out, cache


def conv2d_backward(dout, cache):
    """Gradients of a convolution: dout (N, C_out, H_out, W_out) -> (dx, dw, db).

    dw = doutᵀ · cols, db = Σ dout over (N, H_out, W_out), and dx = col2im(dout · w):
    the column gradient is summed back onto the padded input by `windows_backward`.
    """
    cols, w, x_shape, x_pad_shape, stride, padding = cache
    c_out, c_in, kh, kw = w.shape
    n, _, h_out, w_out = dout.shape
    dout_rows = dout.transpose(0, 2, 3, 1).reshape(-1, c_out)  # (N*H_out*W_out, C_out)
    dw = (dout_rows.T @ cols).reshape(w.shape)
    db = dout.sum(axis=(0, 2, 3))
    dcols = dout_rows @ w.reshape(c_out, -1)  # (N*H_out*W_out, C_in*kH*kW)
    dwin = dcols.reshape(n, h_out, w_out, c_in, kh, kw).transpose(0, 3, 1, 2, 4, 5)
    dx = unpad2d(windows_backward(dwin, x_pad_shape, stride), padding)
    return np.ascontiguousarray(dx), dw, db


# --------------------------------------------------------------------------- pooling


def maxpool2d_forward(x, pool, stride):
    """Maximum of each window (see `layers.MaxPool2D`): (N, C, H, W) -> (N, C, H_out, W_out).

    The cache keeps, per window, the flat index (row-major within the window) of its first
    maximum, so that backward routes each window's gradient to exactly one input.
    """
    win = windows(x, pool, stride)
    n, c, h_out, w_out, kh, kw = win.shape
    flat = win.reshape(n, c, h_out, w_out, kh * kw)  # a copy: windows may overlap
    argmax = flat.argmax(axis=-1)[..., None]  # first maximum, as PyTorch
    out = np.take_along_axis(flat, argmax, axis=-1)[..., 0]
    return out, (argmax, x.shape, (kh, kw), stride)


def maxpool2d_backward(dout, cache):
    """Route each window's gradient to its (first) maximum; overlapping windows accumulate."""
    argmax, x_shape, (kh, kw), stride = cache
    dwin = np.zeros(dout.shape + (kh * kw,), dtype=dout.dtype)
    np.put_along_axis(dwin, argmax, dout[..., None], axis=-1)
    return windows_backward(dwin.reshape(dout.shape + (kh, kw)), x_shape, stride)


def avgpool2d_forward(x, pool, stride):
    """Mean of each window (see `layers.AvgPool2D`): (N, C, H, W) -> (N, C, H_out, W_out)."""
    win = windows(x, pool, stride)
    out = win.mean(axis=(-2, -1), dtype=x.dtype)
    return out, (x.shape, pair(pool), stride)


def avgpool2d_backward(dout, cache):
    """Each input of a window receives dout / (kH*kW) from it; overlaps accumulate."""
    x_shape, (kh, kw), stride = cache
    share = (dout / dout.dtype.type(kh * kw))[..., None, None]
    dwin = np.broadcast_to(share, dout.shape + (kh, kw))
    return windows_backward(dwin, x_shape, stride)


# --------------------------------------------------------------------------- elementwise and dense


def relu_forward(x):
    """max(x, 0), elementwise; the cache is the mask of positive inputs."""
    return np.maximum(x, 0), x > 0


def relu_backward(dout, positive):
    """dout where the input was positive, 0 elsewhere (the derivative at 0 is taken as 0)."""
    return dout * positive


def flatten_forward(x):
    """(N, d1, d2, ...) -> (N, d1*d2*...); the cache is the input shape."""
    return x.reshape(x.shape[0], -1), x.shape


def flatten_backward(dout, x_shape):
    """Reshape the gradient back to the input's shape."""
    return dout.reshape(x_shape)


def linear_forward(x, w, b):
    """x · wᵀ + b: x (N, in), w (out, in), b (out,) -> (N, out)."""
    return x @ w.T + b, (x, w)


def linear_backward(dout, cache):
    """dx = dout · w, dw = doutᵀ · x, db = Σ_n dout: dout (N, out) -> (dx, dw, db)."""
    x, w = cache
    return dout @ w, dout.T @ x, dout.sum(axis=0)
