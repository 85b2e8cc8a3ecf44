"""Layout and windowing shared by convolution and pooling: NCHW views of channels-last
memory, zero padding, the strided view of every window (`windows`, im2col's source) and its
adjoint (`col2im`, col2im: each window's gradient added back onto its pixels)."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import workspace


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


def pad2d(x: np.ndarray, padding, channels_last: bool = False, value: float = 0) -> np.ndarray:
    """Pad the spatial axes of an NCHW array with `value` (zeros by default; max-pooling pads
    with -inf), returning the layout the caller asks for.

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
    _fill_border(padded, axis, ph, pw, value)
    padded[inside] = x
    return padded


def _fill_border(padded: np.ndarray, axis: int, ph: int, pw: int, value: float) -> None:
    """Set the pH rows and pW columns on each side of the spatial axes starting at `axis`."""
    every = slice(None)
    for edge in (slice(0, ph), slice(padded.shape[axis] - ph, None)):
        padded[_spatial_index(axis, edge, every)] = value
    for edge in (slice(0, pw), slice(padded.shape[axis + 1] - pw, None)):
        padded[_spatial_index(axis, every, edge)] = value


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


def col2im(dwin: np.ndarray, x_shape, stride, channels_last: bool = False,
                     out: np.ndarray | None = None) -> np.ndarray:
    """col2im, the adjoint of `windows`: sum window gradients back onto the image.

    dwin: the shape `windows` gives for an input of `x_shape` -> dx: `x_shape`, where
    `dx[n, c, i*sH + m, j*sW + q] += dwin[n, c, i, j, m, q]` (NCHW; likewise channels-last).
    `out`: an array of `x_shape` to write dx into (its contents are replaced), or None.

    NCHW, one strided addition per kernel offset (`col2im_by_offset`), in runs of W_out values.
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
        col2im_by_offset(lambda m, q, out=None: _copied_into(dwin[lead + (m, q)], out), dx, kernel,
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


def col2im_by_offset(offset_gradient, dx: np.ndarray, kernel, stride,
                    channels_last: bool = False) -> None:
    """`col2im` with the window gradients given one kernel offset at a time.

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


def _copied_into(values: np.ndarray, out: np.ndarray | None) -> np.ndarray:
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



def batch_blocks(n: int, bytes_per_image: int, budget: int) -> list[slice]:
    """Slices of range(n), each of as many images as fit in `budget` bytes (at least one)."""
    step = max(1, budget // max(bytes_per_image, 1))
    return [slice(start, min(start + step, n)) for start in range(0, n, step)]
