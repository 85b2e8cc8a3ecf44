"""File helpers shared by the readers and the downloader: gzip-aware reading, atomic writes."""

import gzip
import os
import tempfile
import zlib
from pathlib import Path

GZIP_MAGIC = b"\x1f\x8b"


def read_maybe_gzip(path):
    """The content of `path`, decompressed when it is gzip (by name `.gz` or by content).

    A truncated gzip stream, a CRC error or a `.gz` file that is not gzip raises ValueError
    naming the file (instead of a raw EOFError / zlib.error / BadGzipFile).
    """
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix != ".gz" and not raw.startswith(GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({exc})") from None


def atomic_write(path, write):
    """Create `path` through `write(binary_file)` on a temporary file in the same directory,
    flushed and fsynced, then renamed over `path`: readers never see a partial file, and a
    failure leaves no temporary file behind. Creates missing parent directories.
    Returns `path` as a Path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path, content):
    """`atomic_write` of a bytes object."""
    return atomic_write(path, lambda file: file.write(content))
