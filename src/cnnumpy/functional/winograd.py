"""3x3 convolutions with fewer multiplications: Winograd's minimal filtering F(2x2, 3x3).

A 3x3 convolution computes each output pixel with 9 multiply-adds per input channel. Lavin
and Gray ("Fast Algorithms for Convolutional Neural Networks", CVPR 2016) compute a 2x2 tile
of outputs from the 4x4 tile of input under it with 16 instead of 36, using Winograd's
algorithm for F(2, 3), two outputs of a 3-tap filter, in each spatial direction:

    Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A

with d the 4x4 input tile, g the 3x3 kernel, ⊙ the elementwise product, and

    Bᵀ = [1  0 -1  0]     G = [ 1    0    0 ]     Aᵀ = [1  1  1  0]
         [0  1  1  0]         [1/2  1/2  1/2]          [0  1 -1 -1]
         [0 -1  1  0]         [1/2 -1/2  1/2]
         [0  1  0 -1]         [ 0    0    1 ]

Summed over input channels, the 16 elementwise products become 16 matrix products: for each
(a, b) of the 4x4 transformed tile, V[a, b] (tiles x C_in) times U[a, b] (C_in x C_out). The
transforms are additions and subtractions over strided views of the image (no
multiplications but G's halves, exact in binary); the products do 16 multiply-adds per tile
where the direct convolution does 36, 2.25 times fewer. The price is memory: V holds 16
values per tile and input channel, four times the image, so the transforms are passes over
four times the data, which pays off where the products dominate: many channels
(`conv2d_forward` chooses it by `WINOGRAD_CHANNELS` and `WINOGRAD_TILES`, measured there).
Outputs equal the direct convolution's up to rounding (relative differences near 1e-6 in
float32, 1e-15 in float64); the kernels' transform is computed in the precision of the
products, at least float32.
"""

from __future__ import annotations

import numpy as np

from .. import workspace
from .channelwise import add_bias
from .windowing import batch_blocks, to_nchw

# G of F(2x2, 3x3), as the module docstring writes it (Bᵀ and Aᵀ are the additions below).
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])

# Bytes of V, the transformed input, for one chunk of images (the products' output M is as
# large with as many output channels): chunks of 4 MiB ran slower than 16, whose products
# repack U less often.
WINOGRAD_BYTES = 16 * 2**20


def transformed_kernel(w: np.ndarray, dtype=None) -> np.ndarray:
    """U = G g Gᵀ for every (output, input) channel pair: (C_out, C_in, 3, 3) -> (16, C_out,
    C_in), U[4a + b] the (a, b) entry of each transformed kernel, in `dtype` (by default w's,
    at least float32: G's halves are not integers). One product of the 16x9 matrix
    kron(G, G) with the kernels as (9, C_out·C_in) columns, read transposed from w's memory
    (no copy of a contiguous w)."""
    c_out, c_in = w.shape[:2]
    gg = np.kron(_G, _G).astype(np.result_type(w.dtype if dtype is None else dtype, np.float32))
    return np.matmul(gg, w.reshape(c_out * c_in, 9).T.astype(gg.dtype, copy=False)
                     ).reshape(16, c_out, c_in)


def conv2d_winograd(x_pad: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """A stride-1 3x3 convolution of a padded channels-last input by F(2x2, 3x3).

    x_pad: (N, H_pad, W_pad, C_in), w: (C_out, C_in, 3, 3), b: (C_out,) or None -> out:
    (N, C_out, H_out, W_out), an NCHW view of channels-last memory, H_out = H_pad - 2.
    The output is cut into 2x2 tiles, T_h x T_w of them (T_h = ceil(H_out / 2)); the 4x4
    input tile of tile (s, t) starts at padded pixel (2s, 2t), so neighbouring input tiles
    overlap by two pixels. An odd H_out (W_out) reads one row (column) of zeros past the
    padded input (a copy of the input with that row and column added); the outputs of that
    half-tile are dropped.
    """
    n, h_pad, w_pad, c_in = x_pad.shape
    c_out = w.shape[0]
    h_out, w_out = h_pad - 2, w_pad - 2
    tiles_h, tiles_w = (h_out + 1) // 2, (w_out + 1) // 2
    if (h_pad, w_pad) != (2 * tiles_h + 2, 2 * tiles_w + 2):  # odd: a row of zeros past the end
        grown = workspace.empty((n, 2 * tiles_h + 2, 2 * tiles_w + 2, c_in), x_pad.dtype)
        grown[:, h_pad:] = 0
        grown[:, :, w_pad:] = 0
        grown[:, :h_pad, :w_pad] = x_pad
        x_pad = grown
    # (16, C_in, C_out), a view; in the products' precision (a float64 kernel for a float32
    # input gives a float64 product, as the direct convolution's)
    u = transformed_kernel(w, np.result_type(x_pad, w)).transpose(0, 2, 1)
    out = workspace.empty((n, h_out, w_out, c_out), x_pad.dtype)
    per_image = 16 * tiles_h * tiles_w * max(c_in, c_out) * x_pad.itemsize
    for chunk in batch_blocks(n, per_image, WINOGRAD_BYTES):
        v = _transformed_input(x_pad[chunk], tiles_h, tiles_w)  # (4, 4, images, T_h, T_w, C_in)
        m = workspace.empty(v.shape[:-1] + (c_out,), x_pad.dtype)
        np.matmul(v.reshape(16, -1, c_in), u, out=m.reshape(16, -1, c_out))
        del v  # let go, for the next chunk to reuse its memory
        _inverse_transform(m, out[chunk])
        del m
    if b is not None:
        add_bias(out, b)
    return to_nchw(out)


def _transformed_input(x_pad: np.ndarray, tiles_h: int, tiles_w: int) -> np.ndarray:
    """V = Bᵀ d B for every 4x4 input tile d: (N, 2T_h + 2, 2T_w + 2, C) -> (4, 4, N, T_h, T_w,
    C). Separably: Bᵀ's rows combine rows a = 0..3 of every tile, which are the padded image's
    rows a, a + 2, a + 4, ... (a strided view X_a); then B combines columns the same way."""
    n, _, w_pad, c = x_pad.shape
    rows = workspace.empty((4, n, tiles_h, w_pad, c), x_pad.dtype)  # Bᵀ d, tile rows
    _apply_bt([x_pad[:, a : a + 2 * tiles_h : 2] for a in range(4)], rows)
    v = workspace.empty((4, 4, n, tiles_h, tiles_w, c), x_pad.dtype)
    for a in range(4):
        _apply_bt([rows[a][:, :, q : q + 2 * tiles_w : 2] for q in range(4)], v[a])
    return v


def _apply_bt(d, out) -> None:
    """out[k] = Σ_j Bᵀ[k, j] d[j] for four arrays d[0..3] of one shape."""
    np.subtract(d[0], d[2], out=out[0])
    np.add(d[1], d[2], out=out[1])
    np.subtract(d[2], d[1], out=out[2])
    np.subtract(d[1], d[3], out=out[3])


def _inverse_transform(m: np.ndarray, out: np.ndarray) -> None:
    """out's 2x2 tiles Y = Aᵀ M A from the products M: (4, 4, N, T_h, T_w, C_out) -> out (N,
    H_out, W_out, C_out), output pixel (2s + r, 2t + c) from tile (s, t). Aᵀ combines the rows
    in place in M (rows 0 and 1 become Aᵀ's two rows), then A the columns into out's strided
    views; an odd output drops its last half-tile."""
    for k in range(4):
        m[0, k] += m[1, k]
        m[0, k] += m[2, k]
        m[1, k] -= m[2, k]
        m[1, k] -= m[3, k]
    h_out, w_out = out.shape[1:3]
    for r in range(2):
        cut = (slice(None), slice(0, (h_out - r + 1) // 2))  # the tiles with an output row r
        p = m[r]
        for c in range(2):
            tiles = cut + (slice(0, (w_out - c + 1) // 2),)
            dst = out[:, r::2, c::2]
            if c == 0:  # Aᵀ's row (1, 1, 1, 0)
                np.add(p[0][tiles], p[1][tiles], out=dst)
                dst += p[2][tiles]
            else:  # (0, 1, -1, -1)
                np.subtract(p[1][tiles], p[2][tiles], out=dst)
                dst -= p[3][tiles]
