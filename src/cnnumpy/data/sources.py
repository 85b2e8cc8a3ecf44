"""Where the data files come from: a directory given by the user, the per-user cache, system
directories, and as a last resort the official download URLs (checked against the official
MD5 checksums, written atomically).

Search order for data set NAME and a split:
  1. `data_dir` when given (CLI `--data-dir`): `data_dir/NAME/`, then `data_dir/` itself;
  2. otherwise the cache `data_home()/NAME/`, where data_home() is `$CNNUMPY_DATA`, else
     `$XDG_CACHE_HOME/cnnumpy`, else `~/.cache/cnnumpy`; then the system directories
     (`/usr/share/datasets/fashion-mnist`, where the Debian package `dataset-fashion-mnist`
     puts the four official files).
When the files are in none of them and `download=True`, they are downloaded into the first
directory of that list; when that fails, DatasetNotFoundError says which files to put where.
"""

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import cifar, idx
from .files import atomic_write

DATASETS = ("fashion-mnist", "mnist", "cifar10")
SPLITS = ("train", "test")
TITLES = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST", "cifar10": "CIFAR-10"}


@dataclass(frozen=True)
class RemoteFile:
    """A file as published: its name, the URLs of the directories serving it (official
    first), and its official MD5."""
    name: str
    base_urls: tuple
    md5: str


_MNIST_URLS = ("http://yann.lecun.com/exdb/mnist/",
               "https://ossci-datasets.s3.amazonaws.com/mnist/")
_FASHION_URLS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                 "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/")
_CIFAR_URLS = ("https://www.cs.toronto.edu/~kriz/",)

REMOTE_FILES = {   # data set -> split -> the files to download for that split
    "mnist": {
        "train": (RemoteFile("train-images-idx3-ubyte.gz", _MNIST_URLS, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                  RemoteFile("train-labels-idx1-ubyte.gz", _MNIST_URLS, "d53e105ee54ea40749a09fcbcd1e9432")),
        "test": (RemoteFile("t10k-images-idx3-ubyte.gz", _MNIST_URLS, "9fb629c4189551a2d022fa330f9573f3"),
                 RemoteFile("t10k-labels-idx1-ubyte.gz", _MNIST_URLS, "ec29112dd5afa0611ce80d1b7f02629c")),
    },
    "fashion-mnist": {
        "train": (RemoteFile("train-images-idx3-ubyte.gz", _FASHION_URLS, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                  RemoteFile("train-labels-idx1-ubyte.gz", _FASHION_URLS, "25c81989df183df01b3e8a0aad5dffbe")),
        "test": (RemoteFile("t10k-images-idx3-ubyte.gz", _FASHION_URLS, "bef4ecab320f06d8554ea6380940ec79"),
                 RemoteFile("t10k-labels-idx1-ubyte.gz", _FASHION_URLS, "bb300cfdad3c16e7a12a480ee83cd310")),
    },
    "cifar10": dict.fromkeys(SPLITS, (
        RemoteFile(cifar.ARCHIVE_NAME, _CIFAR_URLS, "c32a1d4ab5d03f1284b67883e8d87530"),)),
}

SYSTEM_DIRS = {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),)}
INSTALL_HINTS = {"fashion-mnist": "or install the Debian package that provides them: "
                                  "apt-get install dataset-fashion-mnist"}


class DatasetNotFoundError(FileNotFoundError):
    """The files of a data set are nowhere to be found and could not be downloaded."""


def data_home():
    """The per-user data cache: $CNNUMPY_DATA, else $XDG_CACHE_HOME/cnnumpy, else
    ~/.cache/cnnumpy (each data set in a subfolder named after it)."""
    if os.environ.get("CNNUMPY_DATA"):
        return Path(os.environ["CNNUMPY_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "cnnumpy"


def search_dirs(name, data_dir=None):
    """The directories searched for data set `name`, in order; downloads go to the first."""
    if data_dir is not None:
        if not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"data_dir must be a path (str or Path) or None, got "
                            f"{type(data_dir).__name__}")
        data_dir = Path(data_dir).expanduser()
        return [data_dir / name, data_dir]
    return [data_home() / name, *SYSTEM_DIRS.get(name, ())]


def find_in_dir(name, split, folder):
    """The files of `name`/`split` in `folder` as in `dataset_files`, or None when absent."""
    folder = Path(folder)
    if name == "cifar10":
        needed = cifar.SPLIT_FILES[split]
        for candidate in (folder / cifar.BATCHES_DIR, folder):
            if all((candidate / file).is_file() for file in needed):
                return {"source": candidate}
        archive = folder / cifar.ARCHIVE_NAME
        return {"source": archive} if archive.is_file() else None
    found = {}
    for role, base in zip(("images", "labels"), idx.SPLIT_FILES[split]):
        paths = [folder / file for file in (base + ".gz", base) if (folder / file).is_file()]
        if not paths:
            return None
        found[role] = paths[0]
    return found


def check_name_and_split(name, split):
    """Raise ValueError unless `name` is one of DATASETS and `split` one of SPLITS."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; expected one of {DATASETS}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def dataset_files(name, split="train", data_dir=None, download=True):
    """Locate (and if needed download) the files of data set `name`, split "train" or "test".

    Returns {"images": Path, "labels": Path} (IDX files, `.gz` or raw) for "mnist" and
    "fashion-mnist"; {"source": Path} for "cifar10", the path being `cifar-10-binary.tar.gz`
    or a directory holding the `.bin` files. The search order is in the module docstring.
    Raises DatasetNotFoundError (a FileNotFoundError) saying which files to put where.
    """
    check_name_and_split(name, split)
    folders = search_dirs(name, data_dir)
    for folder in folders:
        found = find_in_dir(name, split, folder)
        if found:
            return found
    if not download:
        raise DatasetNotFoundError(_not_found_message(name, split, folders, "download=False"))
    try:
        for remote in REMOTE_FILES[name][split]:
            if not (folders[0] / remote.name).is_file():
                download_file(remote, folders[0] / remote.name)
    except (OSError, ValueError) as exc:
        raise DatasetNotFoundError(_not_found_message(name, split, folders, exc)) from exc
    return find_in_dir(name, split, folders[0])


def fetch_url(url, timeout=60):
    """Open `url` for reading (a binary file-like object). Tests replace this function."""
    return urllib.request.urlopen(url, timeout=timeout)


def download_file(remote, path, chunk_bytes=1 << 20):
    """Download `remote` (a RemoteFile) to `path`, trying its URLs in order; the MD5 is
    checked before the atomic rename, so `path` is either complete and verified or absent.
    Raises OSError listing each URL's failure."""
    failures = []
    for base_url in remote.base_urls:
        url = base_url + remote.name

        def write_verified(file):
            digest = hashlib.md5(usedforsecurity=False)
            with fetch_url(url) as response:
                while chunk := response.read(chunk_bytes):
                    digest.update(chunk)
                    file.write(chunk)
            if digest.hexdigest() != remote.md5:
                raise ValueError(f"MD5 checksum mismatch: got {digest.hexdigest()}, "
                                 f"expected {remote.md5}; download discarded")
        try:
            atomic_write(path, write_verified)
            return path
        except (OSError, ValueError) as exc:
            failures.append(f"{url}: {exc}")
    raise OSError("download failed: " + "; ".join(failures))


def _not_found_message(name, split, folders, reason):
    files = [remote.name for remote in REMOTE_FILES[name][split]]
    urls = sorted({remote.base_urls[0] for remote in REMOTE_FILES[name][split]})
    lines = [f"{TITLES[name]} ({split}) not found; looked in:",
             *(f"  {folder}" for folder in folders),
             f"Not downloaded: {reason}",
             f"Put these files (from {', '.join(urls)}) into {folders[0]}"
             f" (or into a directory given as data_dir / --data-dir):",
             *(f"  {file}" for file in files)]
    if name == "cifar10":
        lines.append(f"  (or its extracted folder {cifar.BATCHES_DIR}/)")
    if name in INSTALL_HINTS:
        lines.append(INSTALL_HINTS[name])
    return "\n".join(lines)
