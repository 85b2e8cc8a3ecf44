"""Generators of bad inputs: edited checkpoints, damaged zip and .npy layers, IDX files with
lying headers, odd images. Shared by the fuzz-style tests and `benchmarks/fuzz_inputs.py`
(which also runs them against older code, so this uses nothing but NumPy and the standard
library, and no cnnumpy API younger than the first release).

Every function returns the bytes of a file, or writes a file and returns its path.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np

METADATA_KEY = "__metadata__"


# --------------------------------------------------------------------------- checkpoints


def read_npz(path) -> tuple[dict, dict]:
    """(metadata, {name: array}) of a valid checkpoint file."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    metadata = json.loads(arrays.pop(METADATA_KEY).tobytes().decode("utf-8"))
    return metadata, arrays


def write_npz(path, metadata, arrays, raw_metadata: bytes | None = None):
    """Write a checkpoint-shaped .npz of `metadata` (JSON, NaN allowed) and `arrays`."""
    text = raw_metadata if raw_metadata is not None else json.dumps(metadata).encode("utf-8")
    np.savez(path, **arrays, **{METADATA_KEY: np.frombuffer(text, dtype=np.uint8)})
    return path


def set_path(tree: dict, dotted: str, value) -> dict:
    """A deep copy of `tree` with the entry at `dotted` (a.b.0.c) set to `value`."""
    tree = json.loads(json.dumps(tree))
    *parents, last = dotted.split(".")
    node = tree
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return tree


def leaf_paths(tree, prefix: str = "") -> list[str]:
    """Dotted paths of every scalar (and empty container) in a JSON tree."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    paths = []
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, (dict, list)) and value:
            paths.extend(leaf_paths(value, path + "."))
        else:
            paths.append(path)
    return paths


# Values that are wrong for almost any field: other types, out of range, absurd sizes.
ODD_VALUES = [None, True, -1, 0, 10**12, 2**64, 1e308, -0.5, "", "x", [], {}, [1, 2], 3.5,
              float("nan"), float("inf")]


def deep_json(depth: int) -> bytes:
    return b'{"format": "cnnumpy-checkpoint", "x": ' + b"[" * depth + b"]" * depth + b"}"


def array_variants(array: np.ndarray) -> dict[str, np.ndarray]:
    """Arrays of the wrong kind standing in for a float parameter of the same shape."""
    return {
        "int64": array.astype(np.int64),
        "bool": array > 0,
        "complex": array.astype(np.complex64),
        "string": np.full(array.shape, "w", dtype="<U1"),
        "float16": array.astype(np.float16),
        "nan": np.where(np.arange(array.size).reshape(array.shape) == 0, np.nan, array),
        "inf": np.full_like(array, np.inf),
        "wrong shape": np.zeros(array.shape[:-1] + (array.shape[-1] + 1,), array.dtype),
        "scalar": np.float32(1.0).reshape(()),
    }


def _central_directory_offsets(content: bytes) -> list[int]:
    offsets, start = [], 0
    while (at := content.find(b"PK\x01\x02", start)) >= 0:
        offsets.append(at)
        start = at + 4
    return offsets


def zip_layer_corruptions(content: bytes) -> dict[str, bytes]:
    """A valid .npz's bytes damaged in the zip and .npy layers."""
    cases = {}
    encrypted = bytearray(content)
    for at in _central_directory_offsets(content):
        encrypted[at + 8] |= 0x1              # general purpose flags, bit 0: encrypted
    encrypted[6] |= 0x1                       # the first local header too
    cases["encrypted flag"] = bytes(encrypted)
    method = bytearray(content)
    for at in _central_directory_offsets(content):
        method[at + 10:at + 12] = struct.pack("<H", 99)    # compression method 99 (AES)
    method[8:10] = struct.pack("<H", 99)
    cases["unknown compression"] = bytes(method)
    cases["npy magic damaged"] = content.replace(b"\x93NUMPY", b"\x93NUMPZ", 1)
    cases["npy header damaged"] = content.replace(b"'descr'", b"'dexcr'", 1)
    cases["npy shape edited"] = content.replace(b"'shape': (", b"'shape': (99999999, ", 1)
    cases["truncated"] = content[: len(content) * 2 // 3]
    cases["empty"] = b""
    cases["only the zip magic"] = b"PK\x03\x04"
    return cases


def deflate_bomb_npz(declared_bytes: int = 1 << 31) -> bytes:
    """A .npz whose one entry declares `declared_bytes` of zeros, deflated to a few MB."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (declared_bytes // 4,)})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("model/fc1.W.npy", "w", force_zip64=True) as entry:
            entry.write(header.getvalue())
            zeros = bytes(1 << 20)
            for _ in range(declared_bytes >> 20):
                entry.write(zeros)
        archive.writestr(METADATA_KEY + ".npy", _npy_bytes(np.frombuffer(
            json.dumps({"format": "cnnumpy-checkpoint"}).encode(), np.uint8)))
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


# --------------------------------------------------------------------------- IDX files


def idx_bytes(shape, data: bytes | None = None, type_code: int = 0x08) -> bytes:
    """An IDX file declaring `shape`, followed by `data` (default: the declared zeros)."""
    header = bytes([0, 0, type_code, len(shape)]) + b"".join(
        int(size).to_bytes(4, "big") for size in shape)
    if data is None:
        data = bytes(int(np.prod(shape, dtype=object)))
    return header + data


def idx_image_cases() -> dict[str, bytes]:
    """Image files (magic 0x00000803) that are not a usable Fashion-MNIST split."""
    big = 0xFFFFFFFF
    return {
        "dims overflow int64": idx_bytes((big, big, big), b""),
        "product wraps to small": idx_bytes((2**16, 2**16, 1), bytes(16)),
        "declares more than the file": idx_bytes((60000, 28, 28), bytes(28 * 28)),
        "declares less than the file": idx_bytes((1, 28, 28), bytes(2 * 28 * 28)),
        "zero images": idx_bytes((0, 28, 28)),
        "1x1 images": idx_bytes((4, 1, 1)),
        "zero width": idx_bytes((4, 28, 0)),
        "wrong size 27x28": idx_bytes((4, 27, 28)),
        "int32 type code": idx_bytes((4, 28, 28), type_code=0x0C),
        "label magic": idx_bytes((4,)),
    }


def gzip_bomb(declared_shape=(60000, 28, 28), inflated: int = 1 << 30) -> bytes:
    """A small .gz whose content claims `declared_shape` and inflates to `inflated` bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9, mtime=0) as stream:
        stream.write(idx_bytes(declared_shape, b""))
        zeros = bytes(1 << 20)
        for _ in range(inflated >> 20):
            stream.write(zeros)
    return buffer.getvalue()


# --------------------------------------------------------------------------- images


def npy_image_cases() -> dict[str, bytes]:
    """.npy files that are not one clear image or batch of images."""
    png_start = b"\x89PNG\r\n\x1a\n" + bytes(40)
    return {
        "empty file": b"",
        "png renamed npy": png_start,
        "zero-sized axis": _npy_bytes(np.zeros((0, 28), np.uint8)),
        "zero images in a batch": _npy_bytes(np.zeros((0, 1, 28, 28), np.uint8)),
        "ambiguous 3xHx3": _npy_bytes(np.zeros((3, 20, 3), np.uint8)),
        "ambiguous 1xHx3": _npy_bytes(np.zeros((1, 20, 3), np.uint8)),
        "bool pixels": _npy_bytes(np.ones((28, 28), bool)),
        "float out of range": _npy_bytes(np.full((28, 28), 2.0, np.float32)),
        "nan pixels": _npy_bytes(np.full((28, 28), np.nan, np.float32)),
        "complex pixels": _npy_bytes(np.zeros((28, 28), np.complex64)),
        "5 dimensions": _npy_bytes(np.zeros((1, 1, 1, 28, 28), np.uint8)),
        "1 dimension": _npy_bytes(np.zeros(784, np.uint8)),
        "4 channels": _npy_bytes(np.zeros((4, 28, 28), np.uint8)),
        "truncated data": _npy_bytes(np.zeros((28, 28), np.uint8))[:-100],
        "huge declared shape": _npy_bytes(np.zeros((28, 28), np.uint8)).replace(
            b"(28, 28)", b"(99999, 99999)", 1),
        "object array": _pickled_npy(),
    }


def _pickled_npy() -> bytes:
    """A .npy of Python objects: loading it would unpickle (cnnumpy must refuse to)."""
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def picture_cases(tmp_folder) -> dict[str, Path]:
    """Pictures (needs Pillow) a predict must refuse or read right, written to `tmp_folder`."""
    from PIL import Image

    folder = tmp_folder
    cases = {}
    alpha = np.zeros((28, 28, 4), np.uint8)
    alpha[8:20, 8:20, 3] = 255                       # a black square drawn only in alpha
    cases["only alpha"] = folder / "alpha.png"
    Image.fromarray(alpha, "RGBA").save(cases["only alpha"])
    float_tiff = np.full((28, 28), 0.8, np.float32)  # bright, in [0, 1]
    cases["float tiff in [0, 1]"] = folder / "float.tiff"
    Image.fromarray(float_tiff, "F").save(cases["float tiff in [0, 1]"])
    cases["empty png"] = folder / "empty.png"
    cases["empty png"].write_bytes(b"")
    cases["truncated png"] = folder / "truncated.png"
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "PNG")
    cases["truncated png"].write_bytes(buffer.getvalue()[:200])
    cases["text as png"] = folder / "text.png"
    cases["text as png"].write_text("not a picture")
    return cases
