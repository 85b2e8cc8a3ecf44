"""IDX files, the format of MNIST and Fashion-MNIST, gzipped or not.

Layout (all integers big-endian):

    bytes 0-1   0x00 0x00
    byte  2     type code: 0x08 = unsigned byte (the only type these data sets use)
    byte  3     number of dimensions d (3 for images, 1 for labels)
    4*d bytes   the dimensions, uint32 each: (N, H, W) for images, (N,) for labels
    then        N*H*W (or N) data bytes, row-major, and nothing after them

so the magic number is 0x00000803 for an image file and 0x00000801 for a label file.
Every reader here checks the magic number, the dimensions and that the file length matches
the header exactly, and raises ValueError naming the file and the problem.
"""

import gzip
from pathlib import Path

import numpy as np

from .files import atomic_write_bytes, read_maybe_gzip

UBYTE_TYPE_CODE = 0x08
SPLIT_FILES = {   # split -> (images, labels): the official names, without the `.gz` of the downloads
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def parse_idx(content, source="<bytes>", ndim=None):
    """Decode IDX bytes into a uint8 array of the shape the header gives.

    content: the (decompressed) file content.  source: the file name used in error messages.
    ndim: the number of dimensions expected (3 for images, 1 for labels), or None for any.
    The returned array is writable and owns its memory.
    """
    if len(content) < 4:
        raise ValueError(f"{source}: truncated IDX file ({len(content)} bytes, no header)")
    magic = int.from_bytes(content[:4], "big")
    dims = content[3]
    expected_dims = dims if ndim is None else ndim
    if content[:2] != b"\x00\x00" or content[2] != UBYTE_TYPE_CODE or dims != expected_dims:
        raise ValueError(f"{source}: bad IDX magic number 0x{magic:08x}, expected "
                         f"0x{UBYTE_TYPE_CODE << 8 | expected_dims:08x} "
                         f"(unsigned bytes, {expected_dims} dimension(s))")
    header_bytes = 4 + 4 * dims
    if len(content) < header_bytes:
        raise ValueError(f"{source}: truncated IDX header ({len(content)} bytes, the header "
                         f"of a {dims}-dimensional file needs {header_bytes})")
    shape = tuple(int.from_bytes(content[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    data_bytes = int(np.prod(shape, dtype=np.int64))
    found = len(content) - header_bytes
    if found != data_bytes:
        problem = "truncated" if found < data_bytes else "has extra bytes after the data"
        raise ValueError(f"{source}: {problem}: the header gives shape "
                         f"{'x'.join(map(str, shape))} = {data_bytes} data bytes, "
                         f"the file has {found}")
    data = np.frombuffer(content, dtype=np.uint8, count=data_bytes, offset=header_bytes)
    return data.reshape(shape).copy()


def read_idx(path, ndim=None):
    """The uint8 array stored in the IDX file `path` (`.gz` or raw); see `parse_idx`."""
    return parse_idx(read_maybe_gzip(path), str(path), ndim)


def read_idx_images(path):
    """Images of an IDX image file (magic 0x00000803) as (N, 1, H, W) uint8."""
    images = read_idx(path, ndim=3)        # (N, H, W)
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise ValueError(f"{path}: images of size {images.shape[1]}x{images.shape[2]}")
    return images[:, None, :, :]           # (N, 1, H, W)


def read_idx_labels(path, num_classes=10):
    """Labels of an IDX label file (magic 0x00000801) as (N,) int64, each in [0, num_classes)."""
    labels = read_idx(path, ndim=1).astype(np.int64)
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        raise ValueError(f"{path}: label {labels[bad[0]]} at index {bad[0]} is out of range "
                         f"0..{num_classes - 1} ({bad.size} such labels)")
    return labels


def encode_idx(array):
    """The IDX bytes of a uint8 array with 1 to 255 dimensions (the inverse of `parse_idx`)."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"IDX files hold uint8 here, got dtype {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX arrays have 1 to 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, UBYTE_TYPE_CODE, array.ndim])
    header += b"".join(int(size).to_bytes(4, "big") for size in array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def write_idx(path, array):
    """Write a uint8 array as an IDX file, gzipped when `path` ends in `.gz`; returns the Path.

    For images pass (N, H, W) (an (N, 1, H, W) array is squeezed to that): the result is
    what `read_idx_images` reads back as (N, 1, H, W). Used by tests to make small data sets.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    content = encode_idx(array)
    if path.suffix == ".gz":
        content = gzip.compress(content, compresslevel=6, mtime=0)
    return atomic_write_bytes(path, content)


def write_idx_split(folder, split, images, labels, gz=True):
    """Write a split of an MNIST-like data set under its official file names in `folder`.

    images: (N, 1, H, W) or (N, H, W) uint8; labels: (N,) integers 0..255. gz=True writes
    the `.gz` files as published. Returns {"images": Path, "labels": Path}, which is what
    `cnnumpy.data.dataset_files` then finds. Used by tests to make small data sets.
    """
    suffix = ".gz" if gz else ""
    image_name, label_name = SPLIT_FILES[split]
    return {"images": write_idx(Path(folder) / (image_name + suffix), images),
            "labels": write_idx(Path(folder) / (label_name + suffix),
                                np.asarray(labels).astype(np.uint8))}
