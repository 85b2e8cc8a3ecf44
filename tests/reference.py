"""Loop references written from the lesson's formulas: slow, obvious, for small shapes only."""

import numpy as np


def conv2d_loops(x, w, b, stride, padding):
    """Z[n, o, i, j] = b[o] + Σ_c Σ_m Σ_q W[o, c, m, q] · X_pad[n, c, i·sH + m, j·sW + q]."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    x_pad = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=x.dtype)
    x_pad[:, :, ph:ph + h, pw:pw + wd] = x
    h_out = (h + 2 * ph - kh) // sh + 1
    w_out = (wd + 2 * pw - kw) // sw + 1
    out = np.zeros((n, c_out, h_out, w_out), dtype=x.dtype)
    for i in range(h_out):
        for j in range(w_out):
            patch = x_pad[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            for o in range(c_out):
                out[:, o, i, j] = np.sum(patch * w[o], axis=(1, 2, 3)) + b[o]
    return out


def pool2d_loops(x, pool, stride, reduce):
    """Z[n, c, i, j] = reduce over the window x[n, c, i·sH : i·sH + kH, j·sW : j·sW + kW]."""
    (kh, kw), (sh, sw) = pool, stride
    n, c, h, w = x.shape
    h_out, w_out = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = np.zeros((n, c, h_out, w_out), dtype=x.dtype)
    for i in range(h_out):
        for j in range(w_out):
            out[:, :, i, j] = reduce(x[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw], axis=(2, 3))
    return out
