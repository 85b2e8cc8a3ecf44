"""Batch transforms against float64 formulas and per-image loop references."""

import numpy as np
import pytest

from cnnumpy.data import channel_stats, normalize, random_crop, random_erasing, random_hflip


def uint8_batch(shape=(6, 3, 7, 5), seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def crop_loops(batch, padding, dy, dx):
    """Pad image by image with zeros and cut the H x W window at (dy[n], dx[n])."""
    n, c, h, w = batch.shape
    out = np.empty_like(batch)
    for i in range(n):
        padded = np.zeros((c, h + 2 * padding, w + 2 * padding), dtype=batch.dtype)
        padded[:, padding:padding + h, padding:padding + w] = batch[i]
        out[i] = padded[:, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


def test_channel_stats_match_float64_formula():
    images = uint8_batch()
    mean, std = channel_stats(images)
    scaled = images.astype(np.float64) / 255.0
    assert mean.dtype == np.float32 and std.dtype == np.float32 and mean.shape == (3,)
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 2, 3)), rtol=1e-6)
    constant = np.full((2, 1, 3, 3), 51, dtype=np.uint8)
    mean, std = channel_stats(constant)
    np.testing.assert_allclose(mean, [0.2], rtol=1e-6)
    assert std[0] == 0.0


def test_normalize_matches_float64_formula_in_float32():
    images = uint8_batch()
    mean, std = np.array([0.5, 0.25, 0.1]), np.array([0.2, 0.3, 0.4])
    out = normalize(images, mean, std)
    expected = (images / 255.0 - mean[:, None, None]) / std[:, None, None]
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    mean32, std32 = channel_stats(images)
    standardized = normalize(images, mean32, std32)
    np.testing.assert_allclose(standardized.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(standardized.std(axis=(0, 2, 3)), 1.0, rtol=1e-4)


def test_normalize_checks_its_arguments():
    images = uint8_batch()
    with pytest.raises(TypeError, match="images must be uint8 .0..255., got float32"):
        normalize(images.astype(np.float32), [0.5] * 3, [0.2] * 3)
    with pytest.raises(ValueError, match=r"mean must have one value per channel \(3\), got shape \(1,\)"):
        normalize(images, [0.5], [0.2] * 3)
    with pytest.raises(ValueError, match="std must be positive"):
        normalize(images, [0.5] * 3, [0.2, 0.0, 0.2])
    with pytest.raises(ValueError, match=r"images must be an array of shape \(N, C, H, W\), got \(7, 5\)"):
        normalize(images[0, 0], [0.5], [0.2])


@pytest.mark.parametrize("padding", [0, 1, 3])
def test_random_crop_is_a_shifted_copy(padding):
    batch = uint8_batch((9, 2, 6, 5), seed=1)
    out = random_crop(batch, padding, np.random.default_rng(7))
    draws = np.random.default_rng(7)
    dy = draws.integers(0, 2 * padding + 1, size=9)
    dx = draws.integers(0, 2 * padding + 1, size=9)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    np.testing.assert_array_equal(out, crop_loops(batch, padding, dy, dx))
    if padding == 0:
        np.testing.assert_array_equal(out, batch)


def test_random_crop_keeps_float32_and_is_seeded():
    batch = np.random.default_rng(2).standard_normal((16, 3, 8, 8)).astype(np.float32)
    first = random_crop(batch, 2, np.random.default_rng(5))
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, random_crop(batch, 2, np.random.default_rng(5)))
    assert not np.array_equal(first, random_crop(batch, 2, np.random.default_rng(6)))
    with pytest.raises(ValueError, match="padding must be an integer >= 0, got -1"):
        random_crop(batch, -1, np.random.default_rng(0))


def test_random_hflip_is_exact_and_seeded():
    batch = uint8_batch((20, 3, 4, 5), seed=3)
    out = random_hflip(batch, np.random.default_rng(9))
    flip = np.random.default_rng(9).random(20) < 0.5
    assert 0 < flip.sum() < 20
    for i in range(20):
        expected = batch[i, :, :, ::-1] if flip[i] else batch[i]
        np.testing.assert_array_equal(out[i], expected)
    np.testing.assert_array_equal(random_hflip(batch, np.random.default_rng(0), p=0.0), batch)
    np.testing.assert_array_equal(random_hflip(batch, np.random.default_rng(0), p=1.0),
                                  batch[..., ::-1])
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
        random_hflip(batch, np.random.default_rng(0), p=1.5)


def test_a_part_of_a_batch_gets_the_whole_batch_draws():
    batch = uint8_batch((10, 1, 5, 5), seed=4)
    whole = random_hflip(random_crop(batch, 1, np.random.default_rng(2)), np.random.default_rng(3))
    part = random_hflip(random_crop(batch[4:7], 1, np.random.default_rng(2), start=4, total=10),
                        np.random.default_rng(3), start=4, total=10)
    np.testing.assert_array_equal(part, whole[4:7])
    with pytest.raises(ValueError, match="a part of 3 images starting at 8 does not fit in a "
                                         "batch of 10"):
        random_crop(batch[4:7], 1, np.random.default_rng(2), start=8, total=10)


def erasing_loops(batch, rng, p, scale, ratio, value):
    """Random erasing image by image, as torchvision's RandomErasing decides for one image,
    from draws made in the order `random_erasing` documents."""
    n, c, h, w = batch.shape
    chosen = rng.random(n) < p
    areas = h * w * rng.uniform(*scale, size=(n, 10))
    ratios = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), size=(n, 10)))
    tops, lefts = rng.random(n), rng.random(n)
    out = batch.copy()
    for i in range(n):
        if not chosen[i]:
            continue
        for area, aspect in zip(areas[i], ratios[i]):
            eh, ew = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
            if eh < h and ew < w:
                top, left = int(tops[i] * (h - eh + 1)), int(lefts[i] * (w - ew + 1))
                out[i, :, top:top + eh, left:left + ew] = np.asarray(value)[:, None, None]
                break
    return out


@pytest.mark.parametrize("p, scale, ratio", [(0.5, (0.02, 0.33), (0.3, 3.3)),
                                             (1.0, (0.3, 0.9), (0.2, 5.0)),
                                             (1.0, (0.98, 1.0), (1.0, 1.0)), (0.0, (0.1, 0.2), (1, 1))])
def test_random_erasing_is_the_per_image_rule(p, scale, ratio):
    """The first of 10 attempts that fits is placed; with areas near the whole image none
    fits and the images stay whole; p = 0 erases nothing. One value per channel."""
    batch = uint8_batch((40, 3, 12, 9), seed=5)
    value = [7, 8, 9]
    got = random_erasing(batch, np.random.default_rng(6), p, scale, ratio, value)
    expected = erasing_loops(batch, np.random.default_rng(6), p, scale, ratio, value)
    np.testing.assert_array_equal(got, expected)
    erased = (got != batch).any(axis=(1, 2, 3))
    if p == 0.0 or scale[0] > 0.95:  # nothing to erase, or no rectangle fits
        assert not erased.any()
    else:  # with p = 1, all but the images whose 10 attempts were all too large
        assert 5 < erased.sum() < 35 if p < 1 else erased.sum() > 30


def test_random_erasing_covers_its_area_range_and_splits_like_the_batch():
    batch = np.full((2000, 1, 28, 28), 200, np.uint8)
    out = random_erasing(batch, np.random.default_rng(7), 0.5, value=0)
    erased = (out == 0).any(axis=(1, 2, 3))
    assert 0.45 < erased.mean() < 0.52  # p, less the draws where no attempt fits
    share = (out == 0).sum(axis=(1, 2, 3))[erased] / (28 * 28)
    assert 0.015 < share.min() < 0.03 and 0.3 < share.max() < 0.36  # rounding of h and w
    part = random_erasing(batch[300:340], np.random.default_rng(7), 0.5, value=0,
                          start=300, total=2000)
    np.testing.assert_array_equal(part, out[300:340])
    with pytest.raises(ValueError, match="value must be a number or one per channel"):
        random_erasing(batch[:2], np.random.default_rng(0), value=[1, 2])
    with pytest.raises(ValueError, match="scale must be"):
        random_erasing(batch[:2], np.random.default_rng(0), scale=(0.5, 0.1))
    for value in (300, 0.7, -1):  # uint8 pixels: whole numbers in [0, 255]
        with pytest.raises(ValueError, match=r"value must be whole numbers in \[0, 255\]"):
            random_erasing(batch[:2], np.random.default_rng(0), value=value)
    floats = random_erasing(batch[:2].astype(np.float32), np.random.default_rng(0), 1.0,
                            value=0.7)
    assert set(np.unique(floats)) <= {np.float32(0.7), np.float32(200)}
