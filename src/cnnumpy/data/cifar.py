"""CIFAR-10 in its official *binary* version (`cifar-10-binary.tar.gz`); no pickle.

The archive holds the directory `cifar-10-batches-bin/` with

    data_batch_1.bin .. data_batch_5.bin   10000 training records each
    test_batch.bin                         10000 test records
    batches.meta.txt                       the 10 class names, one per line

and each record is 1 + 3072 bytes: the label (0..9), then a 32x32 image as three 1024-byte
planes, red, green, blue, each row-major. So a file of n records reshapes directly to
(n, 3073), and the pixel part to (n, 3, 32, 32): NCHW with no transposition.
"""

import io
import tarfile
import zlib
from pathlib import Path

import numpy as np

from .files import atomic_write

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
BATCHES_DIR = "cifar-10-batches-bin"
ARCHIVE_NAME = "cifar-10-binary.tar.gz"
META_FILE = "batches.meta.txt"
SPLIT_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
IMAGE_SHAPE = (3, 32, 32)
RECORD_BYTES = 1 + 3 * 32 * 32        # 3073


def parse_records(content, source="<bytes>", num_classes=len(CIFAR10_CLASSES)):
    """Decode CIFAR-10 binary records: (images (n, 3, 32, 32) uint8, labels (n,) int64).

    content: the bytes of one or more whole records; source names the file in errors.
    The images are a read-only view into `content` (`read_cifar10` copies them once).
    """
    if len(content) == 0 or len(content) % RECORD_BYTES:
        raise ValueError(f"{source}: {len(content)} bytes is not a positive whole number of "
                         f"CIFAR-10 records of {RECORD_BYTES} bytes (1 label + 3072 pixels)")
    records = np.frombuffer(content, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        raise ValueError(f"{source}: record {bad[0]} has label {labels[bad[0]]}, out of range "
                         f"0..{num_classes - 1} ({bad.size} such records)")
    images = records[:, 1:].reshape((-1,) + IMAGE_SHAPE)   # (n, 3, 32, 32)
    return images, labels


def parse_class_names(text, source="<text>", num_classes=len(CIFAR10_CLASSES)):
    """Class names from `batches.meta.txt`: one per non-blank line."""
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != num_classes:
        raise ValueError(f"{source}: expected {num_classes} class names, one per line, "
                         f"found {len(names)}")
    return names


def _read_members(source, wanted):
    """{file name: bytes} for the names in `wanted` found in `source`.

    source: `cifar-10-binary.tar.gz` (read in one pass, nothing extracted to disk), the
    directory `cifar-10-batches-bin`, or a directory containing it.
    """
    source = Path(source)
    if source.is_dir():
        folder = source / BATCHES_DIR if (source / BATCHES_DIR).is_dir() else source
        present = [name for name in wanted if (folder / name).is_file()]
        for name in present:
            _check_member_size(f"{folder / name}", name, (folder / name).stat().st_size)
        return {name: (folder / name).read_bytes() for name in present}
    found = {}
    try:
        with tarfile.open(source, "r:*") as archive:
            for member in archive:
                name = Path(member.name).name
                if member.isfile() and name in wanted and name not in found:
                    _check_member_size(f"{source}: {member.name}", name, member.size)
                    found[name] = archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{source}: corrupt or truncated archive ({exc})") from None
    return found


# The largest file of the data set: a batch of 10000 records (the class names: a few lines).
MAX_MEMBER_BYTES = {META_FILE: 1 << 16}
MAX_BATCH_BYTES = 10000 * RECORD_BYTES


def _check_member_size(where, name, size):
    """ValueError before reading a file larger than any file of CIFAR-10 binary."""
    limit = MAX_MEMBER_BYTES.get(name, MAX_BATCH_BYTES)
    if size > limit:
        raise ValueError(f"{where}: {size} bytes, more than the {limit} this file of "
                         f"CIFAR-10 binary holds at most")


def read_cifar10(source, split="train"):
    """Read a split of CIFAR-10 binary: (images (N, 3, 32, 32) uint8, labels (N,) int64,
    class_names). N = 50000 for "train" (data_batch_1..5 in order), 10000 for "test".

    source: the archive `cifar-10-binary.tar.gz` or an extracted directory (see
    `_read_members`). Class names come from `batches.meta.txt` when present, else the
    official list. Missing batch files, bad record sizes or labels raise ValueError.
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {tuple(SPLIT_FILES)}, got {split!r}")
    batch_names = SPLIT_FILES[split]
    members = _read_members(source, set(batch_names) | {META_FILE})
    missing = [name for name in batch_names if name not in members]
    if missing:
        raise ValueError(f"{source}: missing CIFAR-10 binary file(s) {', '.join(missing)} "
                         f"(expected in {BATCHES_DIR}/)")
    parts = [parse_records(members[name], f"{source}: {name}") for name in batch_names]
    images = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([labels for _, labels in parts])
    class_names = CIFAR10_CLASSES
    if META_FILE in members:
        text = members[META_FILE].decode("utf-8", errors="replace")
        class_names = parse_class_names(text, f"{source}: {META_FILE}")
    return images, labels, class_names


def encode_records(images, labels):
    """The CIFAR-10 binary bytes of (n, 3, 32, 32) uint8 images and their labels 0..255."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"images must be uint8 of shape (n, 3, 32, 32), got {images.dtype} "
                         f"{images.shape}")
    if labels.shape != images.shape[:1] or labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError(f"labels must be {images.shape[0]} values in 0..255, got shape "
                         f"{labels.shape}")
    records = np.empty((len(images), RECORD_BYTES), dtype=np.uint8)
    records[:, 0] = labels
    records[:, 1:] = images.reshape(len(images), -1)
    return records.tobytes()


def write_cifar10(path, train, test, class_names=CIFAR10_CLASSES):
    """Write a small data set in the official CIFAR-10 binary layout; returns `path`.

    train, test: (images (n, 3, 32, 32) uint8, labels (n,)) pairs; the training records
    (at least 5) are spread over the five `data_batch_*.bin` files.
    path ending in `.tar.gz`: writes the archive; otherwise a directory in which
    `cifar-10-batches-bin/` is created. class_names=None leaves out `batches.meta.txt`.
    Used by tests to make small data sets.
    """
    path = Path(path)
    if len(train[0]) < len(SPLIT_FILES["train"]):
        raise ValueError(f"train needs at least {len(SPLIT_FILES['train'])} images (one per "
                         f"data_batch file), got {len(train[0])}")
    files = {name: encode_records(images, labels) for name, (images, labels) in zip(
        SPLIT_FILES["train"],
        zip(np.array_split(train[0], 5), np.array_split(np.asarray(train[1]), 5)))}
    files["test_batch.bin"] = encode_records(*test)
    if class_names is not None:
        files[META_FILE] = ("\n".join(class_names) + "\n").encode()
    if path.name.endswith(".tar.gz"):
        def write_archive(file):
            with tarfile.open(fileobj=file, mode="w:gz") as archive:
                for name, content in files.items():
                    info = tarfile.TarInfo(f"{BATCHES_DIR}/{name}")
                    info.size = len(content)
                    archive.addfile(info, io.BytesIO(content))
        return atomic_write(path, write_archive)
    folder = path / BATCHES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return path
