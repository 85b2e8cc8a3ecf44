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
import math
from pathlib import Path

import numpy as np

from .files import atomic_write_bytes, open_maybe_gzip

UBYTE_TYPE_CODE = 0x08
SPLIT_FILES = {   # split -> (images, labels): the official names, without the `.gz` of the downloads
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# The largest data part an IDX file may declare (Fashion-MNIST's training images: 47 MB).
MAX_IDX_BYTES = 1 << 30
# Deflate inflates at most about 1032:1; a .gz declaring more than this per stored byte lies.
MAX_GZIP_RATIO = 1100


def _idx_shape(header, source, ndim):
    """The shape the IDX header declares (checking magic number and header length)."""
    if len(header) < 4:
        raise ValueError(f"{source}: truncated IDX file ({len(header)} bytes, no header)")
    magic = int.from_bytes(header[:4], "big")
    dims = header[3]
    expected_dims = dims if ndim is None else ndim
    if header[:2] != b"\x00\x00" or header[2] != UBYTE_TYPE_CODE or dims != expected_dims:
        raise ValueError(f"{source}: bad IDX magic number 0x{magic:08x}, expected "
                         f"0x{UBYTE_TYPE_CODE << 8 | expected_dims:08x} "
                         f"(unsigned bytes, {expected_dims} dimension(s))")
    header_bytes = 4 + 4 * dims
    if len(header) < header_bytes:
        raise ValueError(f"{source}: truncated IDX header ({len(header)} bytes, the header "
                         f"of a {dims}-dimensional file needs {header_bytes})")
    return tuple(int.from_bytes(header[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))


def _size_error(source, shape, data_bytes, found, more=False):
    problem = "truncated" if found < data_bytes else "has extra bytes after the data"
    return ValueError(f"{source}: {problem}: the header gives shape "
                      f"{'x'.join(map(str, shape))} = {data_bytes} data bytes, "
                      f"the file has {'more than ' if more else ''}{found}")


def _check_declared_size(source, shape, limit):
    """The number of data bytes `shape` declares (a Python int: no overflow), if within
    `limit`; ValueError before anything of that size is allocated otherwise."""
    data_bytes = math.prod(shape)
    if data_bytes > limit:
        raise ValueError(f"{source}: the header gives shape {'x'.join(map(str, shape))} = "
                         f"{data_bytes} data bytes, more than the file can hold "
                         f"({limit} at most)")
    return data_bytes


def parse_idx(content, source="<bytes>", ndim=None):
    """Decode IDX bytes into a uint8 array of the shape the header gives.

    content: the (decompressed) file content.  source: the file name used in error messages.
    ndim: the number of dimensions expected (3 for images, 1 for labels), or None for any.
    The returned array is writable and owns its memory.
    """
    shape = _idx_shape(content[:4 + 4 * content[3]] if len(content) >= 4 else content,
                       source, ndim)
    header_bytes = 4 + 4 * len(shape)
    data_bytes = math.prod(shape)
    found = len(content) - header_bytes
    if found != data_bytes:
        raise _size_error(source, shape, data_bytes, found)
    data = np.frombuffer(content, dtype=np.uint8, count=data_bytes, offset=header_bytes)
    return data.reshape(shape).copy()


def read_idx(path, ndim=None):
    """The uint8 array stored in the IDX file `path` (`.gz` or raw); see `parse_idx`.

    The header is read first and the size it declares checked against the file (and
    MAX_IDX_BYTES) before the data is read; a `.gz` is inflated as a stream that stops one
    byte past the declared size, so a small file never inflates to gigabytes.
    """
    path = Path(path)
    stored = path.stat().st_size
    with open_maybe_gzip(path) as stream:
        header = stream.read(4)
        if len(header) == 4:
            header += stream.read(4 * header[3])
        shape = _idx_shape(header, path, ndim)
        if isinstance(stream, gzip.GzipFile):
            data_bytes = _check_declared_size(path, shape,
                                              min(MAX_IDX_BYTES, stored * MAX_GZIP_RATIO))
        else:
            data_bytes = _check_declared_size(path, shape, MAX_IDX_BYTES)
            if data_bytes != stored - len(header):
                raise _size_error(path, shape, data_bytes, stored - len(header))
        content = stream.read(data_bytes)
        if len(content) < data_bytes:
            raise _size_error(path, shape, data_bytes, len(content))
        extra = len(stream.read(1 << 16))
        if extra:
            raise _size_error(path, shape, data_bytes, data_bytes + extra,
                              more=len(stream.read(1)) > 0)
    return np.frombuffer(content, dtype=np.uint8).reshape(shape).copy()


def read_idx_images(path):
    """Images of an IDX image file (magic 0x00000803) as (N, 1, H, W) uint8, N >= 1."""
    images = read_idx(path, ndim=3)        # (N, H, W)
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise ValueError(f"{path}: images of size {images.shape[1]}x{images.shape[2]}")
    if images.shape[0] == 0:
        raise ValueError(f"{path}: holds no images (the header gives 0)")
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
