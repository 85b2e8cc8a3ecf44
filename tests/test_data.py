"""Data sets in their official formats: IDX (MNIST, Fashion-MNIST), CIFAR-10 binary, where
files come from, ImageDataset, batching and the validation split. Every file is written
here in the official format; nothing touches the network."""

import gzip
import hashlib
import io
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from cnnumpy.data import (CIFAR10_CLASSES, DATASETS, FASHION_MNIST_CLASSES, MNIST_CLASSES,
                          DatasetNotFoundError, ImageDataset, data_home, dataset_files,
                          iterate_batches, load_dataset, num_batches, train_val_split)
from cnnumpy.data import cifar, idx, sources

SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network and an empty per-user cache in every test."""
    def no_network(url, timeout=60):
        raise urllib.error.URLError(f"network disabled in tests ({url})")
    monkeypatch.setattr(sources, "fetch_url", no_network)
    monkeypatch.setenv("CNNUMPY_DATA", str(tmp_path / "cache"))
    monkeypatch.setitem(sources.SYSTEM_DIRS, "fashion-mnist", ())


def make_images(n, shape, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def make_labels(n, seed, classes=10):
    return np.random.default_rng(seed).integers(0, classes, size=n).astype(np.int64)


def write_mnist_like(folder, split="train", n=12, gz=True, seed=0):
    """Write a split of an MNIST-like data set of n 28x28 images; returns (images, labels)."""
    images, labels = make_images(n, (1, 28, 28), seed), make_labels(n, seed + 1)
    idx.write_idx_split(folder, split, images, labels, gz=gz)
    return images, labels


def cifar_arrays(n, seed):
    return make_images(n, (3, 32, 32), seed), make_labels(n, seed + 1)


# ---------------------------------------------------------------- IDX files

@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_round_trip(tmp_path, suffix):
    images, labels = make_images(7, (1, 5, 4), 0), make_labels(7, 1)
    idx.write_idx(tmp_path / f"img{suffix}", images)
    idx.write_idx(tmp_path / f"lab{suffix}", labels.astype(np.uint8))
    read_images = idx.read_idx_images(tmp_path / f"img{suffix}")
    read_labels = idx.read_idx_labels(tmp_path / f"lab{suffix}")
    assert read_images.shape == (7, 1, 5, 4) and read_images.dtype == np.uint8
    assert read_labels.dtype == np.int64
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)
    assert read_images.flags.writeable


def test_idx_header_is_the_official_layout(tmp_path):
    idx.write_idx(tmp_path / "img", make_images(3, (2, 5), 0))
    idx.write_idx(tmp_path / "lab", np.arange(3, dtype=np.uint8))
    img, lab = (tmp_path / "img").read_bytes(), (tmp_path / "lab").read_bytes()
    assert img[:16] == bytes.fromhex("00000803" "00000003" "00000002" "00000005")
    assert len(img) == 16 + 3 * 2 * 5
    assert lab == bytes.fromhex("00000801" "00000003" "000102")


def idx_bytes(array):
    return idx.encode_idx(np.asarray(array, dtype=np.uint8))


GOOD_IMAGES = idx_bytes(np.zeros((2, 3, 3)))

CORRUPT_IDX = {
    "labels read as images": (idx_bytes([1, 2]), "images", r"magic number 0x00000801, expected 0x00000803"),
    "float type code": (b"\x00\x00\x0d\x03" + GOOD_IMAGES[4:], "images", r"magic number 0x00000d03"),
    "not idx at all": (b"hello world, not an idx file", "images", r"bad IDX magic number"),
    "empty": (b"", "images", r"truncated IDX file \(0 bytes"),
    "truncated header": (GOOD_IMAGES[:10], "images", r"truncated IDX header"),
    "truncated data": (GOOD_IMAGES[:-1], "images", r"truncated: the header gives shape 2x3x3 = 18 data bytes, the file has 17"),
    "extra bytes": (GOOD_IMAGES + b"\x00", "images", r"extra bytes after the data.* has 19"),
    "label out of range": (idx_bytes([3, 12, 0, 10]), "labels", r"label 12 at index 1 is out of range 0..9 \(2 such"),
    "images read as labels": (GOOD_IMAGES, "labels", r"magic number 0x00000803, expected 0x00000801"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT_IDX))
@pytest.mark.parametrize("gz", [False, True])
def test_corrupt_idx_files_raise_clear_errors(tmp_path, case, gz):
    content, kind, message = CORRUPT_IDX[case]
    path = tmp_path / ("broken-idx-ubyte" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(content) if gz else content)
    reader = idx.read_idx_images if kind == "images" else idx.read_idx_labels
    with pytest.raises(ValueError, match=message) as error:
        reader(path)
    assert str(path) in str(error.value)


def test_corrupt_gzip_raises_clear_errors(tmp_path):
    compressed = gzip.compress(GOOD_IMAGES)
    truncated = tmp_path / "truncated-idx3-ubyte.gz"
    truncated.write_bytes(compressed[:-12])
    with pytest.raises(ValueError, match=r"truncated-idx3-ubyte.gz: corrupt or truncated gzip"):
        idx.read_idx_images(truncated)
    bad_crc = tmp_path / "crc-idx3-ubyte.gz"                  # the CRC-32 is in bytes -8..-5
    bad_crc.write_bytes(compressed[:-8] + bytes([compressed[-8] ^ 0xFF]) + compressed[-7:])
    with pytest.raises(ValueError, match=r"crc-idx3-ubyte.gz: corrupt or truncated gzip.*CRC"):
        idx.read_idx_images(bad_crc)
    not_gzip = tmp_path / "plain-idx3-ubyte.gz"
    not_gzip.write_bytes(b"\x00\x00\x08\x03 not gzip")
    with pytest.raises(ValueError, match=r"plain-idx3-ubyte.gz: corrupt or truncated gzip"):
        idx.read_idx_images(not_gzip)


def test_encode_idx_rejects_non_uint8():
    with pytest.raises(TypeError, match="uint8 here, got dtype float32"):
        idx.encode_idx(np.zeros((2, 2), dtype=np.float32))


# ---------------------------------------------------------------- CIFAR-10 binary

@pytest.mark.parametrize("form", ["cifar-10-binary.tar.gz", "extracted"])
def test_cifar_round_trip(tmp_path, form):
    train, test = cifar_arrays(13, 0), cifar_arrays(4, 5)
    names = tuple(f"class{i}" for i in range(10))
    source = cifar.write_cifar10(tmp_path / form, train, test, class_names=names)
    for split, (images, labels) in (("train", train), ("test", test)):
        read_images, read_labels, read_names = cifar.read_cifar10(source, split)
        assert read_images.shape == (len(images), 3, 32, 32) and read_images.dtype == np.uint8
        assert read_labels.dtype == np.int64 and read_names == names
        np.testing.assert_array_equal(read_images, images)
        np.testing.assert_array_equal(read_labels, labels)


def test_cifar_record_layout_is_label_then_rgb_planes():
    images = np.zeros((1, 3, 32, 32), dtype=np.uint8)
    images[0, 0, 0, 1], images[0, 1, 2, 0], images[0, 2, 31, 31] = 11, 22, 33
    record = cifar.encode_records(images, np.array([7]))
    assert len(record) == 3073 and record[0] == 7
    assert record[1 + 1] == 11                               # red plane, row 0, column 1
    assert record[1 + 1024 + 2 * 32] == 22                   # green plane, row 2, column 0
    assert record[1 + 2048 + 31 * 32 + 31] == 33             # blue plane, last pixel
    read_images, read_labels = cifar.parse_records(record)
    np.testing.assert_array_equal(read_images, images)


def test_cifar_class_names_default_without_meta_file(tmp_path):
    source = cifar.write_cifar10(tmp_path / "d", cifar_arrays(5, 0), cifar_arrays(2, 1),
                                 class_names=None)
    assert cifar.read_cifar10(source, "test")[2] == CIFAR10_CLASSES


def test_cifar_errors(tmp_path):
    source = cifar.write_cifar10(tmp_path / "d", cifar_arrays(5, 0), cifar_arrays(2, 1))
    batches = source / cifar.BATCHES_DIR
    test_file = batches / "test_batch.bin"
    good = test_file.read_bytes()

    test_file.write_bytes(good[:-1])
    with pytest.raises(ValueError, match=r"test_batch.bin: 6145 bytes is not a positive whole "
                                         r"number of CIFAR-10 records of 3073 bytes"):
        cifar.read_cifar10(source, "test")
    test_file.write_bytes(bytes([10]) + good[1:])
    with pytest.raises(ValueError, match=r"test_batch.bin: record 0 has label 10, out of range 0..9"):
        cifar.read_cifar10(source, "test")
    test_file.write_bytes(good)
    (batches / cifar.META_FILE).write_text("airplane\nautomobile\n")
    with pytest.raises(ValueError, match=r"batches.meta.txt: expected 10 class names.*found 2"):
        cifar.read_cifar10(source, "test")
    (batches / "data_batch_3.bin").unlink()
    with pytest.raises(ValueError, match=r"missing CIFAR-10 binary file\(s\) data_batch_3.bin"):
        cifar.read_cifar10(source, "train")
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'test'\), got 'val'"):
        cifar.read_cifar10(source, "val")


def test_cifar_truncated_or_corrupt_archive(tmp_path):
    archive = cifar.write_cifar10(tmp_path / "cifar-10-binary.tar.gz", cifar_arrays(5, 0),
                                  cifar_arrays(2, 1))
    content = archive.read_bytes()
    archive.write_bytes(content[:len(content) // 2])
    with pytest.raises(ValueError, match=r"cifar-10-binary.tar.gz: corrupt or truncated archive"):
        cifar.read_cifar10(archive, "train")
    archive.write_bytes(b"this is no archive" * 100)
    with pytest.raises(ValueError, match=r"cifar-10-binary.tar.gz: corrupt or truncated archive"):
        cifar.read_cifar10(archive, "train")


def test_cifar_file_larger_than_the_data_set_is_refused_unread(tmp_path):
    folder = cifar.write_cifar10(tmp_path / "d", cifar_arrays(5, 0), cifar_arrays(2, 1))
    batch = folder / cifar.BATCHES_DIR / "test_batch.bin"
    os.truncate(batch, 1 << 40)  # a sparse terabyte: reading it would not end well
    with pytest.raises(ValueError, match=r"test_batch.bin: 1099511627776 bytes, more than the "
                                         r"30730000"):
        cifar.read_cifar10(folder, "test")


def test_no_pickle_anywhere_in_the_package():
    package = Path(cifar.__file__).parents[1]
    for source_file in package.rglob("*.py"):
        text = source_file.read_text()
        assert "import pickle" not in text and "allow_pickle=True" not in text, source_file


# ---------------------------------------------------------------- load_dataset and sources

@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_load_mnist_like_from_data_dir(tmp_path, name, gz):
    images, labels = write_mnist_like(tmp_path / "data" / name, "test", gz=gz)
    dataset = load_dataset(name, "test", data_dir=tmp_path / "data", download=False)
    assert isinstance(dataset, ImageDataset) and dataset.name == name
    assert dataset.images.shape == (12, 1, 28, 28) and dataset.sample_shape == (1, 28, 28)
    np.testing.assert_array_equal(dataset.images, images)
    np.testing.assert_array_equal(dataset.labels, labels)
    expected = FASHION_MNIST_CLASSES if name == "fashion-mnist" else MNIST_CLASSES
    assert dataset.class_names == expected and len(dataset) == 12


def test_data_dir_itself_may_hold_the_files(tmp_path):
    write_mnist_like(tmp_path, "train")
    files = dataset_files("mnist", "train", data_dir=tmp_path, download=False)
    assert files == {"images": tmp_path / "train-images-idx3-ubyte.gz",
                     "labels": tmp_path / "train-labels-idx1-ubyte.gz"}


@pytest.mark.parametrize("form", ["cifar-10-binary.tar.gz", "extracted"])
def test_load_cifar10_from_data_dir(tmp_path, form):
    train, test = cifar_arrays(6, 0), cifar_arrays(3, 1)
    cifar.write_cifar10(tmp_path / "cifar10" / (form if form.endswith(".gz") else ""), train, test)
    dataset = load_dataset("cifar10", "train", data_dir=tmp_path, download=False)
    assert dataset.images.shape == (6, 3, 32, 32) and dataset.class_names == CIFAR10_CLASSES
    np.testing.assert_array_equal(dataset.images, train[0])
    np.testing.assert_array_equal(dataset.labels, train[1])


def test_image_label_count_mismatch(tmp_path):
    write_mnist_like(tmp_path, "train", n=5)
    idx.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz has 5 images but "
                                         r".*train-labels-idx1-ubyte.gz has 4 labels"):
        load_dataset("mnist", "train", data_dir=tmp_path, download=False)


def test_cache_directory_and_its_environment_variables(tmp_path, monkeypatch):
    assert data_home() == tmp_path / "cache"
    write_mnist_like(tmp_path / "cache" / "mnist", "test")
    assert load_dataset("mnist", "test").images.shape == (12, 1, 28, 28)
    monkeypatch.delenv("CNNUMPY_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_home() == tmp_path / "xdg" / "cnnumpy"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_home() == tmp_path / "home" / ".cache" / "cnnumpy"


def test_system_directory_is_searched_after_the_cache(tmp_path, monkeypatch):
    monkeypatch.setitem(sources.SYSTEM_DIRS, "fashion-mnist", (tmp_path / "system",))
    write_mnist_like(tmp_path / "system", "train", seed=1)
    assert dataset_files("fashion-mnist", "train")["images"].parent == tmp_path / "system"
    write_mnist_like(tmp_path / "cache" / "fashion-mnist", "train", seed=2)
    assert dataset_files("fashion-mnist", "train")["images"].parent == \
        tmp_path / "cache" / "fashion-mnist"


def test_missing_files_say_what_to_put_where(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset("fashion-mnist", "train")
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    for expected in ("Fashion-MNIST (train) not found", str(tmp_path / "cache" / "fashion-mnist"),
                     "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                     "network disabled in tests", "apt-get install dataset-fashion-mnist"):
        assert expected in message
    with pytest.raises(DatasetNotFoundError, match=r"download=False") as error:
        load_dataset("cifar10", "test", data_dir=tmp_path / "d", download=False)
    assert "cifar-10-binary.tar.gz" in str(error.value) and "apt-get" not in str(error.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.*"))


def test_download_verifies_the_checksum_and_writes_atomically(tmp_path, monkeypatch):
    write_mnist_like(tmp_path / "origin", "test", n=9)
    served = {path.name: path.read_bytes() for path in (tmp_path / "origin").iterdir()}
    # the generated files stand in for the official ones, with their own checksums
    patched = tuple(sources.RemoteFile(remote.name, remote.base_urls,
                                       hashlib.md5(served[remote.name]).hexdigest())
                    for remote in sources.REMOTE_FILES["mnist"]["test"])
    monkeypatch.setitem(sources.REMOTE_FILES, "mnist", {"test": patched})
    requested = []

    def serve(url, timeout=60):
        requested.append(url)
        return io.BytesIO(served[url.rsplit("/", 1)[1]])
    monkeypatch.setattr(sources, "fetch_url", serve)
    dataset = load_dataset("mnist", "test", data_dir=tmp_path / "data")
    assert dataset.images.shape == (9, 1, 28, 28)
    assert requested == [sources.REMOTE_FILES["mnist"]["test"][0].base_urls[0] + r.name
                         for r in patched]
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == \
        ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_download_with_wrong_checksum_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "fetch_url", lambda url, timeout=60: io.BytesIO(b"garbage"))
    with pytest.raises(DatasetNotFoundError, match=r"MD5 checksum mismatch.*download discarded"):
        load_dataset("mnist", "test")
    assert list((tmp_path / "cache" / "mnist").iterdir()) == []


def test_unknown_name_or_split():
    with pytest.raises(ValueError, match=r"unknown data set 'svhn'; expected one of"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'test'\), got 'dev'"):
        load_dataset("mnist", "dev")
    assert DATASETS == ("fashion-mnist", "mnist", "cifar10")


@pytest.mark.skipif(not SYSTEM_FASHION.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    for split, count in (("train", 60000), ("test", 10000)):
        dataset = load_dataset("fashion-mnist", split, data_dir=SYSTEM_FASHION, download=False)
        assert dataset.images.shape == (count, 1, 28, 28) and dataset.images.dtype == np.uint8
        assert dataset.labels.shape == (count,) and dataset.labels.dtype == np.int64
        np.testing.assert_array_equal(np.bincount(dataset.labels), np.full(10, count // 10))
        assert dataset.class_names[0] == "T-shirt/top" and dataset.class_names[9] == "Ankle boot"
        assert 0 < dataset.images.mean() < 255


# ---------------------------------------------------------------- ImageDataset

def test_image_dataset_validates_its_arrays():
    images, labels = make_images(4, (1, 3, 3), 0), make_labels(4, 1, classes=3)
    with pytest.raises(TypeError, match=r"images must be a uint8 array of shape \(N, C, H, W\), got float32"):
        ImageDataset(images.astype(np.float32), labels, ("a", "b", "c"), "x")
    with pytest.raises(TypeError, match=r"labels must be an int64 array of shape \(N,\), got int32"):
        ImageDataset(images, labels.astype(np.int32), ("a", "b", "c"), "x")
    with pytest.raises(ValueError, match=r"4 images but 3 labels"):
        ImageDataset(images, labels[:3], ("a", "b", "c"), "x")
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\) for 2 class names"):
        ImageDataset(images, np.array([0, 1, 2, 0]), ("a", "b"), "x")
    dataset = ImageDataset(images, labels, ["a", "b", "c"], "x")
    assert dataset.class_names == ("a", "b", "c") and dataset.num_classes == 3
    part = dataset.subset(np.array([3, 1]))
    np.testing.assert_array_equal(part.images, images[[3, 1]])
    np.testing.assert_array_equal(part.labels, labels[[3, 1]])
    assert part.class_names == dataset.class_names and part.name == "x"


# ---------------------------------------------------------------- batches and splits

@pytest.mark.parametrize("count, batch_size, drop_last", [(10, 3, False), (10, 3, True),
                                                          (12, 4, False), (2, 5, False)])
def test_iterate_batches_covers_every_index_once(count, batch_size, drop_last):
    batches = list(iterate_batches(count, batch_size, np.random.default_rng(0),
                                   drop_last=drop_last))
    assert len(batches) == num_batches(count, batch_size, drop_last)
    sizes = [len(b) for b in batches]
    assert all(size == batch_size for size in sizes[:-1])
    seen = np.concatenate(batches)
    assert seen.dtype == np.int64 and len(np.unique(seen)) == len(seen)
    if drop_last:
        assert sizes[-1] == batch_size and len(seen) == count // batch_size * batch_size
    else:
        np.testing.assert_array_equal(np.sort(seen), np.arange(count))


def test_iterate_batches_order_is_seeded_and_drawn_at_the_call():
    first = np.concatenate(list(iterate_batches(50, 8, np.random.default_rng(3))))
    again = np.concatenate(list(iterate_batches(50, 8, np.random.default_rng(3))))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, np.arange(50))
    rng_a, rng_b = np.random.default_rng(4), np.random.default_rng(4)
    iterate_batches(50, 8, rng_a)                       # not consumed at all
    next(iterate_batches(50, 8, rng_b))                 # one batch consumed
    assert rng_a.random() == rng_b.random()
    ordered = np.concatenate(list(iterate_batches(7, 3, shuffle=False)))
    np.testing.assert_array_equal(ordered, np.arange(7))


def test_iterate_batches_accepts_a_dataset_and_checks_arguments():
    dataset = ImageDataset(make_images(5, (1, 2, 2), 0), make_labels(5, 1), MNIST_CLASSES, "m")
    assert sum(len(b) for b in iterate_batches(dataset, 2, shuffle=False)) == 5
    with pytest.raises(TypeError, match="shuffle=True needs rng"):
        iterate_batches(5, 2)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        iterate_batches(5, 0, shuffle=False)


def test_train_val_split_stratified_and_seeded():
    labels = np.repeat(np.arange(4), [40, 20, 10, 30]).astype(np.int64)
    dataset = ImageDataset(make_images(100, (1, 2, 2), 0), labels, tuple("abcd"), "toy")
    train, val = train_val_split(dataset, 0.2, np.random.default_rng(0))
    np.testing.assert_array_equal(np.bincount(val.labels, minlength=4), [8, 4, 2, 6])
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=4), [32, 16, 8, 24])
    # every image lands in exactly one part (images are identified by their bytes here)
    keys = lambda part: {image.tobytes() for image in part.images}
    assert keys(train).isdisjoint(keys(val)) and keys(train) | keys(val) == keys(dataset)
    train2, val2 = train_val_split(dataset, 0.2, np.random.default_rng(0))
    np.testing.assert_array_equal(val.images, val2.images)
    _, val3 = train_val_split(dataset, 0.2, np.random.default_rng(1))
    assert not np.array_equal(val.images, val3.images)
    plain_train, plain_val = train_val_split(dataset, 0.25, np.random.default_rng(0),
                                             stratify=False)
    assert (len(plain_train), len(plain_val)) == (75, 25)
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\), got 1.0"):
        train_val_split(dataset, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="leaves 100 for training and 0 for validation"):
        train_val_split(dataset, 0.001, np.random.default_rng(0))
