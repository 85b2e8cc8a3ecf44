"""Batch transforms: per-channel statistics and normalisation, random crop, flip and erasing.

All functions take NCHW batches and are vectorised over the batch (no Python loop over
images); randomness comes only from the `numpy.random.Generator` passed in.
"""

import numpy as np


def _check_batch(batch, what="batch"):
    if not isinstance(batch, np.ndarray) or batch.ndim != 4:
        raise ValueError(f"{what} must be an array of shape (N, C, H, W), got "
                         f"{getattr(batch, 'shape', type(batch))}")


def _check_uint8(images):
    _check_batch(images, "images")
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8 (0..255), got {images.dtype}")


def channel_stats(images):
    """Per-channel mean and standard deviation of uint8 images scaled to [0, 1].

    images: (N, C, H, W) uint8.  Returns (mean, std), float32 arrays of shape (C,), with
    std the population standard deviation (ddof=0), as used by `normalize`:
        mean_c = S1_c / (M 255),  std_c = sqrt(S2_c / (M 255^2) - mean_c^2)
    where S1_c, S2_c are the exact integer sums of x and x^2 over channel c's M = N H W
    pixels (accumulated in uint64, so no float temporaries of the data's size).
    """
    _check_uint8(images)
    n, _, h, w = images.shape
    if n * h * w == 0:
        raise ValueError(f"channel_stats needs at least one pixel, got images of shape "
                         f"{images.shape}")
    sums = images.sum(axis=(0, 2, 3), dtype=np.uint64)                       # (C,)
    squares = np.einsum("nchw,nchw->c", images, images, dtype=np.uint64,
                        casting="unsafe")                                     # (C,)
    pixels = float(n * h * w)
    mean = sums / (pixels * 255.0)
    var = squares / (pixels * 255.0**2) - mean**2
    return mean.astype(np.float32), np.sqrt(np.maximum(var, 0.0)).astype(np.float32)


def _channel_vector(values, channels, what):
    try:
        vector = np.asarray(values, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be {channels} number(s), one per channel, got "
                        f"{values!r:.80}") from None
    if vector.shape != (channels,):
        raise ValueError(f"{what} must have one value per channel ({channels}), got "
                         f"shape {np.shape(values)}")
    if not np.isfinite(vector).all():
        raise ValueError(f"{what} must be finite, got {vector}")
    return vector


def check_normalization(normalization, channels=None):
    """`normalization` as a pair (mean, std) of float32 vectors, one value per channel
    (`channels` of them when given), finite, std > 0; TypeError / ValueError otherwise."""
    if not isinstance(normalization, (tuple, list)) or len(normalization) != 2:
        raise TypeError(f"normalization must be a pair (mean, std) of per-channel values "
                        f"(from channel_stats), got {normalization!r:.80}")
    mean, std = normalization
    if channels is None:
        channels = np.size(mean)
    mean = _channel_vector(mean, channels, "normalization mean")
    std = _channel_vector(std, channels, "normalization std")
    if not np.all(std > 0):
        raise ValueError(f"normalization std must be positive, got {std}")
    return mean, std


def normalize(images, mean, std):
    """(images / 255 - mean) / std per channel, as float32 (N, C, H, W).

    images: (N, C, H, W) uint8.  mean, std: C values each (e.g. from `channel_stats`).
    Computed as images * (1 / (255 std)) - mean / std in float32 straight into the output:
    no float64 and no full-size temporaries.
    """
    _check_uint8(images)
    channels = images.shape[1]
    mean = _channel_vector(mean, channels, "mean")
    std = _channel_vector(std, channels, "std")
    if not np.all(std > 0):
        raise ValueError(f"std must be positive, got {std}")
    scale = (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]   # (C, 1, 1)
    shift = (mean / std).astype(np.float32)[:, None, None]            # (C, 1, 1)
    out = np.multiply(images, scale, dtype=np.float32)
    out -= shift
    return out


def _part_of(batch, start, total):
    """The images [start, start + N) of a batch of `total` (default: the batch is whole)."""
    n = batch.shape[0]
    total = n if total is None else total
    if not 0 <= start <= start + n <= total:
        raise ValueError(f"a part of {n} images starting at {start} does not fit in a batch "
                         f"of {total}")
    return slice(start, start + n), total


def random_crop(batch, padding, rng, *, start=0, total=None):
    """Zero-pad each image by `padding` pixels on every side, then crop back to H x W at an
    offset (dy, dx) drawn uniformly from [0, 2 padding]^2 independently for each image.

    out[n, :, i, j] = padded[n, :, i + dy[n], j + dx[n]]: a copy of the image shifted by
    (padding - dy[n], padding - dx[n]) with zeros moved in. batch: (N, C, H, W), any dtype;
    returns a new array of the same shape and dtype. Draws dy then dx, N integers each.

    A part of a larger batch (`total` images, this part from image `start`, as one process
    of several holds) draws for the whole batch and keeps its own images' offsets, so the
    parts together are cropped exactly as the whole batch would be.
    """
    _check_batch(batch)
    if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"padding must be an integer >= 0, got {padding!r}")
    part, total = _part_of(batch, start, total)
    n, c, h, w = batch.shape
    dy = rng.integers(0, 2 * padding + 1, size=total)[part]
    dx = rng.integers(0, 2 * padding + 1, size=total)[part]
    padded = np.zeros((n, c, h + 2 * padding, w + 2 * padding), dtype=batch.dtype)
    padded[:, :, padding:padding + h, padding:padding + w] = batch
    crops = np.lib.stride_tricks.sliding_window_view(padded, (h, w), axis=(2, 3))
    # crops: (N, C, 2p+1, 2p+1, H, W) view; picking (n, dy[n], dx[n]) gives (N, C, H, W)
    return crops[np.arange(n), :, dy, dx]


def random_hflip(batch, rng, p=0.5, *, start=0, total=None):
    """Mirror each image left-right with probability p (one draw per image).

    batch: (N, C, H, W), any dtype; returns a new array of the same shape and dtype.
    A part of a larger batch draws for all `total` images and keeps its own (see random_crop).
    """
    _check_batch(batch)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    part, total = _part_of(batch, start, total)
    flip = rng.random(total)[part] < p
    return np.where(flip[:, None, None, None], batch[..., ::-1], batch)


def random_erasing(batch, rng, p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0, *,
                   start=0, total=None):
    """Fill one random rectangle of each image with `value`, with probability p (Zhong et
    al., "Random Erasing Data Augmentation", AAAI 2020; the rule of torchvision's
    RandomErasing).

    For an image of H x W pixels chosen (one draw per image, u < p), up to 10 attempts
    each draw an area a = H·W·U(scale) and an aspect ratio r = exp(U(log ratio)); the first
    attempt whose rectangle h = round(√(a·r)) by w = round(√(a/r)) is smaller than the image
    (h < H, w < W) is placed at a uniform top-left corner (i, j), i in [0, H - h], j in
    [0, W - w], and out[n, :, i:i+h, j:j+w] = value; if none fits, the image stays whole.
    value: a number, or one per channel. batch: (N, C, H, W), any dtype; returns a new array
    of the same shape and dtype. Draws for the whole batch, in this order: u (N), the areas
    (N x 10), the log ratios (N x 10), then the corners (N each for i and j, uniform in
    [0, 1), scaled to the room each image has).

    A part of a larger batch (`total` images, this part from image `start`) draws for the
    whole batch and keeps its own images' draws (see random_crop).
    """
    _check_batch(batch)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    if not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"scale must be (low, high) with 0 < low <= high <= 1, got {scale!r}")
    if not (len(ratio) == 2 and 0 < ratio[0] <= ratio[1]):
        raise ValueError(f"ratio must be (low, high) with 0 < low <= high, got {ratio!r}")
    part, total = _part_of(batch, start, total)
    n, c, h, w = batch.shape
    value = np.asarray(value).reshape(-1)
    if value.size not in (1, c) or not np.issubdtype(value.dtype, np.number):
        raise ValueError(f"value must be a number or one per channel ({c}), got {value!r:.80}")
    if np.issubdtype(batch.dtype, np.integer):
        limits = np.iinfo(batch.dtype)
        if not np.all((value == np.round(value)) & (limits.min <= value) & (value <= limits.max)):
            raise ValueError(f"value must be whole numbers in [{limits.min}, {limits.max}] for "
                             f"{batch.dtype} images, got {value}")
    value = value.astype(batch.dtype)
    chosen = rng.random(total)[part] < p
    areas = h * w * rng.uniform(scale[0], scale[1], size=(total, 10))[part]
    ratios = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), size=(total, 10)))[part]
    heights = np.round(np.sqrt(areas * ratios)).astype(int)
    widths = np.round(np.sqrt(areas / ratios)).astype(int)
    fits = (heights < h) & (widths < w)
    attempt = fits.argmax(axis=1)  # the first attempt that fits (0 if none: not chosen then)
    chosen &= fits.any(axis=1)
    rows = np.arange(n)
    eh, ew = heights[rows, attempt], widths[rows, attempt]
    top = (rng.random(total)[part] * (h - eh + 1)).astype(int)
    left = (rng.random(total)[part] * (w - ew + 1)).astype(int)
    y, x = np.arange(h), np.arange(w)
    inside = (((y >= top[:, None]) & (y < (top + eh)[:, None]))[:, :, None]
              & ((x >= left[:, None]) & (x < (left + ew)[:, None]))[:, None, :])
    erase = (inside & chosen[:, None, None])[:, None]  # (N, 1, H, W)
    return np.where(erase, value[None, :, None, None], batch)
