"""File helpers shared by the readers and the downloader: gzip-aware reading, atomic writes."""

import gzip
import os
import tempfile
import zlib
from pathlib import Path

GZIP_MAGIC = b"\x1f\x8b"


class _CheckedGzip(gzip.GzipFile):
    """A GzipFile whose reading errors (truncated stream, bad CRC, not gzip at all) are
    ValueErrors naming the file, instead of a raw EOFError / zlib.error / BadGzipFile."""

    def read(self, size=-1):
        try:
            return super().read(size)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{self.name}: corrupt or truncated gzip file ({exc})") from None


def open_maybe_gzip(path):
    """`path` open for binary reading, inflated as a stream when it is gzip (by name `.gz` or
    by content): read(n) inflates only what it returns."""
    path = Path(path)
    with open(path, "rb") as file:
        gzipped = path.suffix == ".gz" or file.read(2) == GZIP_MAGIC
    return _CheckedGzip(path) if gzipped else open(path, "rb")


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
