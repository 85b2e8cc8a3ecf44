"""BatchNorm's training passes fused into loops compiled by Numba, when it is installed (the
`fast` extra: `pip install -e ".[fast]"`); `normalization` uses them, else its NumPy passes.

NumPy runs one operation per pass over the values, so BatchNorm's training kernels make
five passes forward and six backward (`normalization`), each reading the activations from
memory again. A compiled loop does a channel's whole arithmetic on a value while it is in a
register: forward reads the values once for both statistics and once more to write the
output, backward reads the gradient and the values once for both sums and once more to
write the input gradient. Two passes each way, the same formulas:

    shifted_sums(x, k)          Σ (x - k), Σ (x - k)²                  (float64, per channel)
    affine(x, centre, s, b)     (x - centre) · s + b
    gradient_sums(g, x, centre) Σ g, Σ g · (x - centre)                (float64, per channel)
    gradient_input(g, x, centre, a, s, b)   g · a + (x - centre) · s + b

over (M, C) rows, C-contiguous, float32 or float64 (`usable`). The variance comes from the
shifted sums without cancelling digits (k, a value near the mean, keeps Σ (x - k)² of the
variance's size: var = (Σ (x - k)² - (Σ (x - k))² / m) / m). The sums go through narrow
channels' rows k·C values at a time (`WIDTH`), as `channelwise.column_dots` does, so that the
loop runs over long rows of independent sums; each of a loop row's values adds `BLOCK` loop
rows (BLOCK·k rows of x) in the values' dtype, then into float64.

Measured (one thread, float32, 65536 x 16, one pass = x * 2 into another array, 0.13 ms):
the shifted sums 1.2 passes' time, the affine map 1.4, the gradient's sums and input gradient
1.8 each (they read two arrays); a loop that added every value into its float64 sum (a chain
of dependent additions) took 2 and more, and one indexing x[run * w + j] instead of
x[run, j] was not vectorised (3 to 6 times slower). `benchmarks/batchnorm_passes.py`
measures the layer's kernels against NumPy's passes and PyTorch's.
`enabled = False` here keeps the NumPy passes.
"""

from __future__ import annotations

import importlib.util
import threading
import warnings

import numpy as np

# Installed (imported at the first fused call); `enabled = False` keeps the NumPy passes.
available = importlib.util.find_spec("numba") is not None
enabled = available

WIDTH = 256  # values a row of the loops takes: 16 rows of 16 channels, 4 of 64
BLOCK = 16  # loop rows the sums add in the values' dtype before their float64 sums


def usable(*arrays: np.ndarray) -> bool:
    """True when the fused loops serve these (M, C) arrays: each C-contiguous, all of one
    dtype, float32 or float64, and Numba `enabled` and importable (imported here, once)."""
    dtype = arrays[0].dtype
    return (enabled and dtype in (np.float32, np.float64)
            and all(a.ndim == 2 and a.flags.c_contiguous and a.dtype == dtype for a in arrays)
            and _imported())


_numba = None  # the module once imported; False when its import failed
_lock = threading.Lock()


def _imported() -> bool:
    """Import Numba at the first call; if it is installed but fails to import (say, built
    for another NumPy), warn once and leave the fused loops off for good."""
    global _numba, enabled
    if _numba is None:
        with _lock:
            if _numba is None:
                try:
                    import numba
                except Exception as error:  # noqa: BLE001 - any failure means: not usable
                    warnings.warn(f"Numba is installed but does not import ({error}); "
                                  f"BatchNorm runs its NumPy passes", RuntimeWarning,
                                  stacklevel=2)
                    _numba, enabled = False, False
                else:
                    _numba = numba
    return _numba is not False


class _compiled:
    """A loop compiled by Numba at its first call (one version per dtype, kept on disk
    beside this file), so that importing cnnumpy does not import Numba (a quarter of a
    second)."""

    def __init__(self, function):
        self.function, self.compiled = function, None

    def __call__(self, *args):
        if self.compiled is None:
            if not _imported():
                raise RuntimeError("Numba does not import: check fused.usable() first")
            with _lock:
                if self.compiled is None:
                    self.compiled = _numba.njit(nogil=True, cache=True)(self.function)
        return self.compiled(*args)


@_compiled
def _two_sums(x, y, tiled, squares):
    """Per channel of (M, C) x: Σ y_i and Σ y_i · (x_i - centre), with y = x - centre when
    `squares` (then Σ (x - centre) and Σ (x - centre)²), in float64; `tiled` is the centre
    in x's dtype repeated k times (`_tiled`), for rows of k·C values."""
    m, c = x.shape
    w = len(tiled)
    k = w // c
    runs = m // k
    # Two-dimensional views: Numba vectorises x[run, j] where it did not x[run * w + j].
    xs, ys = x[: runs * k].reshape(runs, w), y[: runs * k].reshape(runs, w)
    first, second = np.zeros(w, np.float64), np.zeros(w, np.float64)
    block_first, block_second = np.zeros(w, x.dtype), np.zeros(w, x.dtype)
    for start in range(0, runs, BLOCK):
        block_first[:] = 0
        block_second[:] = 0
        for run in range(start, min(start + BLOCK, runs)):
            for j in range(w):
                d = xs[run, j] - tiled[j]
                v = d if squares else ys[run, j]
                block_first[j] += v
                block_second[j] += v * d
        for j in range(w):
            first[j] += block_first[j]
            second[j] += block_second[j]
    sums, products = np.zeros(c, np.float64), np.zeros(c, np.float64)
    for j in range(w):
        sums[j % c] += first[j]
        products[j % c] += second[j]
    for i in range(runs * k, m):  # the rows left over
        for j in range(c):
            d = np.float64(x[i, j]) - np.float64(tiled[j])
            v = d if squares else np.float64(y[i, j])
            sums[j] += v
            products[j] += v * d
    return sums, products


@_compiled
def _affine(x, g, tc, ts, tb, ta, out, with_g):
    """out = (x - centre) · scale + shift (+ g · gain when with_g), per channel of (M, C);
    tc, ts, tb, ta: centre, scale, shift and gain tiled as `_two_sums` takes them."""
    m, c = x.shape
    w = len(tc)
    k = w // c
    runs = m // k
    xs, gs = x[: runs * k].reshape(runs, w), g[: runs * k].reshape(runs, w)
    outs = out[: runs * k].reshape(runs, w)
    if with_g:
        for run in range(runs):
            for j in range(w):
                outs[run, j] = gs[run, j] * ta[j] + (xs[run, j] - tc[j]) * ts[j] + tb[j]
    else:
        for run in range(runs):
            for j in range(w):
                outs[run, j] = (xs[run, j] - tc[j]) * ts[j] + tb[j]
    for i in range(runs * k, m):  # the rows left over
        for j in range(c):
            value = (x[i, j] - tc[j]) * ts[j] + tb[j]
            out[i, j] = value + g[i, j] * ta[j] if with_g else value
    return out


def prepare(dtype=np.float32) -> None:
    """Import Numba and compile (or load from disk) the loops for `dtype` now rather than at
    the first training step: about 105 MiB of a process's memory for Numba and LLVM, 30 for
    the loops, seconds when compiled, a fraction of one when loaded. Nothing when the loops
    are not `usable`."""
    x = np.zeros((1, 1), dtype)
    if not usable(x):
        return
    shifted_sums(x, 0)
    gradient_sums(x, x, 0)
    affine(x, 0, 1, 0, np.empty_like(x))
    gradient_input(x, x, 0, 1, 1, 0, np.empty_like(x))


def _tiled(vector, x: np.ndarray) -> np.ndarray:
    """The (C,) vector in x's dtype, repeated k = WIDTH // C times (at least once): the
    values along a row of the loops' k·C."""
    c = x.shape[1]
    return np.tile(np.asarray(vector, dtype=x.dtype).reshape(-1), max(1, WIDTH // c))


def shifted_sums(x: np.ndarray, k) -> tuple[np.ndarray, np.ndarray]:
    """(Σ (x - k), Σ (x - k)²) per column of (M, C) x, in float64; k is rounded to x's
    dtype (pass that rounded k on to whatever uses the sums)."""
    return _two_sums(x, x, _tiled(k, x), True)


def gradient_sums(g: np.ndarray, x: np.ndarray, centre) -> tuple[np.ndarray, np.ndarray]:
    """(Σ g, Σ g · (x - centre)) per column, in float64; centre rounded to x's dtype."""
    return _two_sums(x, g, _tiled(centre, x), False)


def affine(x: np.ndarray, centre, scale, shift, out: np.ndarray) -> np.ndarray:
    """out = (x - centre) · scale + shift, per column (vectors rounded to x's dtype)."""
    scale = _tiled(scale, x)
    return _affine(x, x, _tiled(centre, x), scale, _tiled(shift, x), scale, out, False)


def gradient_input(g: np.ndarray, x: np.ndarray, centre, gain, scale, shift,
                   out: np.ndarray) -> np.ndarray:
    """out = g · gain + (x - centre) · scale + shift, per column (vectors in x's dtype)."""
    return _affine(x, g, _tiled(centre, x), _tiled(scale, x), _tiled(shift, x),
                   _tiled(gain, x), out, True)
