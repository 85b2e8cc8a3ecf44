"""Images to classify: `.npy` arrays and pictures (PNG, JPEG, TIFF, ... through Pillow), made
uint8 (C, H, W) of a model's input shape.

    labels, batch = load_images(["shoe.png", "digits.npy"], input_shape=(1, 28, 28))
    # labels: ["shoe.png", "digits.npy[0]", "digits.npy[1]", ...]; batch: (N, 1, 28, 28) uint8

The files are untrusted: every error is a ValueError (FileNotFoundError when missing) that
names the file, nothing is unpickled, and sizes declared by a file are checked against the
file and against MAX_PIXELS before anything of that size is allocated.

  .npy     one image (H, W), (C, H, W) or (H, W, C) with C in {1, 3}, or a batch (N, C, H, W);
           uint8 pixels, or floats in [0, 1]. A 3-D shape that reads both ways, such as
           (3, 20, 3), is refused rather than guessed.
  picture  decoded by Pillow, turned upright by its EXIF orientation; 16-bit and float
           (in [0, 1]) pictures are scaled to 0-255; a picture with transparency is
           composited over black (the background of MNIST-like data), and one drawn only in
           its alpha channel is refused.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

NPY_MAGIC = b"\x93NUMPY"
MAX_PIXELS = 50_000_000        # pixels of one file (all images, all channels), ~ a 7000x7000 RGB
_PICTURE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError,
                   KeyError, ZeroDivisionError, MemoryError)


def _grayscale(pixels: np.ndarray) -> np.ndarray:
    """(3, H, W) RGB -> (1, H, W) luminance, ITU-R 601-2 (as Pillow's convert("L"))."""
    weights = np.array([0.299, 0.587, 0.114])[:, None, None]
    return np.rint((pixels * weights).sum(axis=0, keepdims=True)).astype(np.uint8)


def _resize(pixels: np.ndarray, height: int, width: int, source: str) -> np.ndarray:
    """(C, h, w) uint8 -> (C, height, width) uint8, bilinear, through Pillow."""
    try:
        from PIL import Image
    except ImportError:
        raise ValueError(f"{source} is {pixels.shape[1]}x{pixels.shape[2]}, the model takes "
                         f"{height}x{width}: resizing needs Pillow (pip install "
                         f"'cnnumpy[image]')") from None
    channels = [np.asarray(Image.fromarray(plane).resize((width, height), Image.BILINEAR))
                for plane in pixels]
    return np.stack(channels)


def to_model_input(pixels: np.ndarray, input_shape, source: str) -> np.ndarray:
    """An image as uint8 (C, H, W) of the model's `input_shape`: channels converted
    (RGB -> gray by luminance, gray -> RGB by repetition), then resized."""
    channels, height, width = input_shape
    if pixels.shape[0] == 3 and channels == 1:
        pixels = _grayscale(pixels)
    elif pixels.shape[0] == 1 and channels == 3:
        pixels = np.repeat(pixels, 3, axis=0)
    elif pixels.shape[0] != channels:
        raise ValueError(f"{source} has {pixels.shape[0]} channels, the model takes {channels}")
    if pixels.shape[1:] != (height, width):
        pixels = _resize(pixels, height, width, source)
    return pixels


# --------------------------------------------------------------------------- .npy


def read_npy(path: Path) -> np.ndarray:
    """The array of a .npy file, its header checked before its data is read: a .npy magic
    number, no Python objects, at most MAX_PIXELS values, a data size that fits the file."""
    with open(path, "rb") as file:
        start = file.read(len(NPY_MAGIC))
        if start != NPY_MAGIC:
            raise ValueError(f"{path}: not a .npy array ({_looks_like(start)}); give pictures "
                             f"a picture's extension (.png, .jpg, ...)")
        file.seek(0)
        try:
            version = np.lib.format.read_magic(file)
            if version not in ((1, 0), (2, 0), (3, 0)):
                raise ValueError(f".npy format version {version} is not supported")
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran_order, dtype = read_header(file)
        except (ValueError, OSError, EOFError, SyntaxError, TypeError) as err:
            raise ValueError(f"{path}: damaged .npy header ({err})") from None
        if dtype.hasobject or dtype.fields is not None:
            raise ValueError(f"{path}: a .npy of Python objects or records, not pixels "
                             f"(pixels are uint8, or floats in [0, 1])")
        count = math.prod(shape)
        if count > MAX_PIXELS:
            raise ValueError(f"{path}: shape {shape} holds {count} values, more than the "
                             f"{MAX_PIXELS} an image file may hold")
        data = file.read(count * dtype.itemsize + 1)
    if len(data) != count * dtype.itemsize:
        raise ValueError(f"{path}: truncated or padded .npy: shape {shape} of {dtype} needs "
                         f"{count * dtype.itemsize} data bytes, the file has {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")


def _looks_like(start: bytes) -> str:
    kinds = {b"\x89PNG": "it starts like a PNG picture", b"\xff\xd8": "it starts like a JPEG",
             b"GIF8": "it starts like a GIF", b"PK": "it starts like a zip or .npz archive"}
    if not start:
        return "the file is empty"
    return next((kind for magic, kind in kinds.items() if start.startswith(magic)),
                "no .npy magic number")


def _uint8_pixels(array: np.ndarray, source) -> np.ndarray:
    """uint8 pixels of a uint8 array, or of floats in [0, 1] (scaled by 255)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ValueError(f"{source}: float pixels must lie in [0, 1], got NaN or "
                             f"infinite values")
        if array.min() < 0 or array.max() > 1:
            raise ValueError(f"{source}: float pixels must lie in [0, 1], got the range "
                             f"[{array.min()}, {array.max()}]")
        return np.rint(array.astype(np.float64) * 255).astype(np.uint8)
    raise ValueError(f"{source}: pixels must be uint8 (0-255) or floats in [0, 1], "
                     f"got {array.dtype}")


def npy_images(path: Path) -> list[tuple[str, np.ndarray]]:
    """Images of a .npy file as [(label, (C, H, W) uint8)] (layouts: the module doc)."""
    array = read_npy(path)
    if array.size == 0:
        raise ValueError(f"{path}: holds no pixels (shape {array.shape})")
    if array.ndim not in (2, 3, 4):
        raise ValueError(f"{path}: expected an image (H, W), (C, H, W), (H, W, C) or a batch "
                         f"(N, C, H, W), got shape {array.shape}")
    array = _uint8_pixels(array, path)
    if array.ndim == 2:
        return [(str(path), array[None])]
    if array.ndim == 4:
        if array.shape[1] not in (1, 3):
            raise ValueError(f"{path}: a batch must be (N, C, H, W) with C = 1 or 3, got "
                             f"shape {array.shape}")
        return [(f"{path}[{i}]", image) for i, image in enumerate(array)]
    first, last = array.shape[0] in (1, 3), array.shape[-1] in (1, 3)
    if first and last:
        raise ValueError(f"{path}: shape {array.shape} reads as (C, H, W) and as (H, W, C); "
                         f"save it as (C, H, W) with H, W > 3, or as a batch (1, C, H, W)")
    if not (first or last):
        raise ValueError(f"{path}: a 3-D image is (C, H, W) or (H, W, C) with C = 1 or 3, "
                         f"got shape {array.shape}")
    return [(str(path), array if first else array.transpose(2, 0, 1))]  # (C, H, W)


# --------------------------------------------------------------------------- pictures


def picture_pixels(path: Path, channels: int) -> np.ndarray:
    """A picture file as uint8 (C, H, W), C = 1 (luminance) when `channels` is 1, else 3 (RGB)."""
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file")
    with open(path, "rb") as file:
        return decode_picture(file, channels, str(path))


def decode_picture(file, channels: int, source: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The picture in a binary file object (a file, `io.BytesIO`) as uint8 (C, H, W), C as
    in `picture_pixels`; `source` names it in errors. Pillow's decompression-bomb limit stays
    on, and pictures of more than `max_pixels` values are refused before they are decoded."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ValueError(f"reading {source}: pictures need Pillow "
                         f"(pip install 'cnnumpy[image]'); .npy arrays need nothing") from None
    try:
        with Image.open(file) as image:
            width, height = image.size
            if width * height * len(image.getbands()) > max_pixels:
                raise ValueError(f"declares {width}x{height} pixels, more than the "
                                 f"{max_pixels} values an image file may hold")
            image = ImageOps.exif_transpose(image)
            array = _flatten(image, channels, Image)
    except (*_PICTURE_ERRORS, Image.DecompressionBombError) as err:
        raise ValueError(f"{source}: not a picture cnnumpy can read ({err})") from None
    if array.size == 0:
        raise ValueError(f"{source}: holds no pixels")
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _flatten(image, channels: int, Image) -> np.ndarray:
    """The pixels of a Pillow image as uint8 (H, W) or (H, W, 3): high bit depths scaled,
    transparency composited over black."""
    if image.mode in ("F", "I", "I;16", "I;16B", "I;16L"):
        values = np.asarray(image)
        if image.mode == "F":
            values = _uint8_pixels(values, "the picture")
        else:
            if values.min() < 0 or values.max() > 65535:
                raise ValueError(f"integer pixels must lie in [0, 65535], got the range "
                                 f"[{values.min()}, {values.max()}]")
            values = np.rint(values / 257.0).astype(np.uint8)
        gray = Image.fromarray(values)
        return np.asarray(gray if channels == 1 else gray.convert("RGB"))
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA")).astype(np.float64)
        alpha = rgba[..., 3:] / 255.0
        composite = Image.fromarray(np.rint(rgba[..., :3] * alpha).astype(np.uint8))
        flat = np.asarray(composite.convert("L") if channels == 1 else composite)
        if flat.min() == flat.max() and alpha.min() != alpha.max():
            raise ValueError("it is drawn only in its alpha channel (uniform colours under a "
                             "varying transparency); save it with opaque colours")
        return flat
    return np.asarray(image.convert("L" if channels == 1 else "RGB"))


def load_images(paths, input_shape) -> tuple[list[str], np.ndarray]:
    """(labels, uint8 batch (N, C, H, W)) from .npy files and pictures (PNG, JPEG, ...)."""
    labels, images = [], []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        if path.suffix.lower() == ".npy":
            entries = npy_images(path)
        else:
            entries = [(str(path), picture_pixels(path, input_shape[0]))]
        for label, pixels in entries:
            labels.append(label)
            images.append(to_model_input(pixels, input_shape, label))
    return labels, np.stack(images)
