"""Images for predict (cnnumpy.data.images): layouts, pixel types, and untrusted files."""

import numpy as np
import pytest

from cnnumpy.data.images import load_images, npy_images
from corruptions import npy_image_cases, picture_cases

Image = pytest.importorskip("PIL.Image")


@pytest.mark.parametrize("case", sorted(npy_image_cases()))
def test_bad_npy_files_are_refused_naming_the_file(tmp_path, case):
    path = tmp_path / "input.npy"
    path.write_bytes(npy_image_cases()[case])
    with pytest.raises(ValueError, match=r"input\.npy: ") as error:
        load_images([path], (1, 28, 28))
    assert "allow_pickle" not in str(error.value)


@pytest.mark.parametrize("shape, layout", [((28, 20), (1, 28, 20)), ((3, 28, 20), (3, 28, 20)),
                                           ((28, 20, 3), (3, 28, 20)), ((28, 20, 1), (1, 28, 20))])
def test_npy_layouts(tmp_path, shape, layout):
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    np.save(tmp_path / "x.npy", pixels)
    [(label, image)] = npy_images(tmp_path / "x.npy")
    assert label.endswith("x.npy") and image.shape == layout
    assert sorted(image.ravel()) == sorted(pixels.ravel())


def test_float_npy_in_unit_range_and_batches(tmp_path):
    np.save(tmp_path / "f.npy", np.full((2, 1, 28, 28), 0.5, np.float32))
    labels, batch = load_images([tmp_path / "f.npy"], (1, 28, 28))
    assert labels == [f"{tmp_path / 'f.npy'}[0]", f"{tmp_path / 'f.npy'}[1]"]
    assert batch.dtype == np.uint8 and (batch == 128).all()


@pytest.mark.parametrize("case", ["only alpha", "empty png", "truncated png", "text as png"])
def test_bad_pictures_are_refused_naming_the_file(tmp_path, case):
    path = picture_cases(tmp_path)[case]
    with pytest.raises(ValueError, match=rf"{path.name}: "):
        load_images([path], (1, 28, 28))


def test_float_tiff_in_unit_range_is_not_black(tmp_path):
    _, batch = load_images([picture_cases(tmp_path)["float tiff in [0, 1]"]], (1, 28, 28))
    assert (batch == 204).all()  # 0.8 · 255


def test_transparency_is_composited_over_black(tmp_path):
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[10:18, 10:18, 3] = 255                      # a grey square, the rest transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "glyph.png")
    _, batch = load_images([tmp_path / "glyph.png"], (1, 28, 28))
    assert (batch[0, 0, 10:18, 10:18] == 200).all() and batch[0, 0, 0, 0] == 0


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 28), np.uint8)
    pixels[:, :4] = 255                              # a bright left edge, as stored
    exif = Image.Exif()
    exif[0x0112] = 6                                 # orientation: rotate 90° clockwise to view
    Image.fromarray(pixels).save(tmp_path / "photo.png", exif=exif)
    _, batch = load_images([tmp_path / "photo.png"], (1, 28, 20))
    assert batch[0, 0, :4].mean() > 200 and batch[0, 0, -4:].mean() < 50  # now the top edge


def test_sixteen_bit_pictures_are_scaled(tmp_path):
    Image.fromarray(np.full((28, 28), 65535, np.uint16)).save(tmp_path / "deep.png")
    _, batch = load_images([tmp_path / "deep.png"], (1, 28, 28))
    assert (batch == 255).all()
