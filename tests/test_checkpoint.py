"""Checkpoints: round trip, atomic writes, clear errors for broken or mismatched files."""

import json

import numpy as np
import pytest

import cnnumpy as cn
from cnnumpy.checkpoint import METADATA_KEY


def trained_pair(rng, dtype=np.float32):
    """A small SimpleCNN and an SGD optimizer that has taken one step."""
    model = cn.SimpleCNN((1, 8, 8), 3, rng=rng, dtype=dtype)
    opt = cn.SGD(model, lr=0.1, momentum=0.9, nesterov=True)
    criterion = cn.CrossEntropyLoss()
    criterion.forward(model.forward(rng.standard_normal((4, 1, 8, 8)).astype(dtype)),
                      np.array([0, 1, 2, 0]))
    model.backward(criterion.backward())
    opt.step()
    return model, opt


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip(tmp_path, rng, dtype):
    model, opt = trained_pair(rng, dtype)
    state = {"seed": 3, "rng": np.random.default_rng(7).bit_generator.state}
    path = cn.save_checkpoint(tmp_path / "run" / "a.npz", model, optimizer=opt,
                              arrays={"mean": np.array([0.5], np.float32)}, metadata=state)
    checkpoint = cn.load_checkpoint(path)
    rebuilt = checkpoint.build_model()
    assert rebuilt.config() == model.config() and rebuilt.dtype == dtype
    for name, value in model.parameters().items():
        assert np.array_equal(rebuilt.parameters()[name], value)
    assert checkpoint.metadata["seed"] == 3 and checkpoint.metadata["cnnumpy_version"]
    assert checkpoint.arrays["mean"].dtype == np.float32
    generator = np.random.default_rng()
    generator.bit_generator.state = checkpoint.metadata["rng"]
    assert generator.random() == np.random.default_rng(7).random()
    restored = cn.SGD(rebuilt, lr=1.0)
    checkpoint.restore_optimizer(restored)
    assert restored.hyperparameters() == opt.hyperparameters() and restored.steps == 1
    for name, buffer in opt.state["momentum_buffer"].items():
        assert np.array_equal(restored.state["momentum_buffer"][name], buffer)
    with np.load(path, allow_pickle=False) as archive:  # plain arrays, no pickle needed
        assert "model/conv1.W" in archive.files


def test_failed_write_leaves_previous_checkpoint(tmp_path, rng, monkeypatch):
    model, opt = trained_pair(rng)
    path = cn.save_checkpoint(tmp_path / "last.npz", model, optimizer=opt)
    before = path.read_bytes()

    def dying_savez(file, **arrays):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", dying_savez)
    model.parameters()["fc2.b"][...] = 42
    with pytest.raises(OSError, match="disk full"):
        cn.save_checkpoint(path, model, optimizer=opt)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.npz"]  # no temporary file left
    assert not (cn.load_checkpoint(path).parameters["fc2.b"] == 42).any()


def test_truncated_and_corrupt_files(tmp_path, rng):
    model, _ = trained_pair(rng)
    path = cn.save_checkpoint(tmp_path / "good.npz", model)
    content = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(content[: len(content) // 2])
    with pytest.raises(ValueError, match=r"truncated\.npz: truncated, corrupt"):
        cn.load_checkpoint(truncated)
    flipped = bytearray(content)
    middle = len(content) // 3
    flipped[middle:middle + 16] = bytes(255 - b for b in flipped[middle:middle + 16])
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"corrupt\.npz: truncated, corrupt"):
        cn.load_checkpoint(corrupt)
    text = tmp_path / "notes.npz"
    text.write_text("not a zip")
    with pytest.raises(ValueError, match="notes.npz: truncated, corrupt"):
        cn.load_checkpoint(text)
    with pytest.raises(FileNotFoundError, match="missing.npz: no such file"):
        cn.load_checkpoint(tmp_path / "missing.npz")


def test_missing_or_foreign_entries(tmp_path):
    plain = tmp_path / "plain.npz"
    np.savez(plain, w=np.zeros(3))
    with pytest.raises(ValueError, match="plain.npz: no __metadata__ entry"):
        cn.load_checkpoint(plain)
    other = tmp_path / "other.npz"
    meta = np.frombuffer(json.dumps({"format": "something-else"}).encode(), np.uint8)
    np.savez(other, **{METADATA_KEY: meta})
    with pytest.raises(ValueError, match="other.npz: not a cnnumpy checkpoint"):
        cn.load_checkpoint(other)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{METADATA_KEY: np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="pickled.npz: truncated, corrupt or not a plain"):
        cn.load_checkpoint(pickled)


def test_incompatible_architecture(tmp_path, rng):
    model, opt = trained_pair(rng)
    path = cn.save_checkpoint(tmp_path / "small.npz", model, optimizer=opt)
    checkpoint = cn.load_checkpoint(path)
    other = cn.SimpleCNN((1, 12, 12), 3, rng=rng)
    with pytest.raises(ValueError, match="small.npz: incompatible architecture"):
        checkpoint.load_into(other)
    checkpoint.metadata["model"]["num_classes"] = 5  # config and arrays disagree
    with pytest.raises(ValueError, match=r"small.npz: incompatible architecture.*fc2"):
        checkpoint.build_model()
    checkpoint.metadata["model"]["name"] = "ResNet1000"
    with pytest.raises(ValueError, match="small.npz: cannot rebuild the model: unknown model"):
        checkpoint.build_model()
    with pytest.raises(ValueError, match="small.npz: optimizer state does not fit"):
        checkpoint.restore_optimizer(cn.Adam(model))
    with pytest.raises(ValueError, match="small.npz: missing metadata entry 'progress'"):
        checkpoint.require("progress")


# --------------------------------------------------------------------------- untrusted files

from corruptions import array_variants, read_npz, set_path, write_npz, zip_layer_corruptions  # noqa: E402


@pytest.fixture
def saved(tmp_path, rng):
    """A checkpoint of save_checkpoint with an optimizer and normalisation: (metadata, arrays)."""
    model, opt = trained_pair(rng)
    path = cn.save_checkpoint(tmp_path / "good.npz", model, optimizer=opt, metadata={
        "class_names": ["a", "b", "c"], "dataset": "toy"},
        arrays={"normalization/mean": np.float32([0.4]), "normalization/std": np.float32([0.2])})
    return read_npz(path)


@pytest.mark.parametrize("kind", sorted(array_variants(np.zeros((2, 3)))))
@pytest.mark.parametrize("entry", ["model/fc2.W", "optimizer/momentum_buffer/conv1.b",
                                   "extra/normalization/std"])
def test_arrays_of_the_wrong_kind_are_refused(tmp_path, saved, kind, entry):
    metadata, arrays = saved
    arrays[entry] = array_variants(arrays[entry])[kind]
    path = write_npz(tmp_path / "edited.npz", metadata, arrays)
    with pytest.raises(ValueError, match=rf"edited\.npz: .*({entry}|{entry.split('/', 1)[1]})"):
        cn.load_checkpoint(path)


@pytest.mark.parametrize("field, value, message", [
    ("model.input_shape", [1, 100000, 100000], r"model.input_shape height must be an integer in \[1, 512\]"),
    ("model.num_classes", 10**12, r"model.num_classes must be an integer in \[1, 100000\], got 1000000000000"),
    ("model.num_classes", "3", r"model.num_classes must be an integer"),
    ("model.name", "ResNet1000", r"unknown model 'ResNet1000'"),
    ("model.depth", 3, r"model 'SimpleCNN' has no setting\(s\) \['depth'\]; its settings are"),
    ("dtype", "int8", r"dtype must be one of \['float32', 'float64'\], got 'int8'"),
    ("class_names", ["a", "b"], r"class_names must hold 3 names \(one per class\), got 2"),
    ("class_names", ["a", None, "c"], r"class_names must be a list of non-empty strings"),
    ("optimizer.hyperparameters.lr", float("inf"), r"optimizer state does not fit: .*lr must be a finite number"),
    ("optimizer.hyperparameters.nesterov", 1, r"nesterov must be True or False"),
    ("optimizer.steps", -1, r"optimizer steps must be an integer >= 0, got -1"),
    ("optimizer.name", "RMSprop", r"optimizer.name must be one of"),
    ("format_version", 99, r"format version 99 is newer"),
    ("format_version", "1", r"format_version must be an integer"),
    ("schedule", {"name": "constant", "lr": -1}, r"lr must be a finite number >= 0.0"),
])
def test_metadata_fields_are_checked(tmp_path, saved, field, value, message):
    metadata, arrays = saved
    path = write_npz(tmp_path / "edited.npz", set_path(metadata, field, value), arrays)
    with pytest.raises(ValueError, match=rf"edited\.npz: .*{message}"):
        cn.load_checkpoint(path)


def test_deep_nesting_and_odd_json_are_refused(tmp_path, saved):
    metadata, arrays = saved
    deep = json.dumps(metadata)[:-1] + ', "notes": ' + "[" * 100000 + "]" * 100000 + "}"
    path = write_npz(tmp_path / "deep.npz", None, arrays, raw_metadata=deep.encode())
    with pytest.raises(ValueError, match=r"deep\.npz: unreadable metadata|deep\.npz: metadata is nested"):
        cn.load_checkpoint(path)
    path = write_npz(tmp_path / "list.npz", None, arrays, raw_metadata=b"[1, 2]")
    with pytest.raises(ValueError, match=r"list\.npz: not a cnnumpy checkpoint"):
        cn.load_checkpoint(path)


@pytest.mark.parametrize("case", sorted(zip_layer_corruptions(bytes(64))))
def test_zip_and_npy_layer_damage_names_the_file(tmp_path, rng, case):
    model, _ = trained_pair(rng)
    content = cn.save_checkpoint(tmp_path / "good.npz", model).read_bytes()
    path = tmp_path / "damaged.npz"
    path.write_bytes(zip_layer_corruptions(content)[case])
    with pytest.raises(ValueError, match=r"checkpoint .*damaged\.npz: truncated, corrupt or not "
                                         r"a plain NumPy \.npz archive"):
        cn.load_checkpoint(path)


def test_a_plain_npy_renamed_npz(tmp_path):
    path = tmp_path / "weights.npz"
    with open(path, "wb") as file:
        np.save(file, np.zeros(3))
    with pytest.raises(ValueError, match=r"weights\.npz: .*\(a single \.npy array\)"):
        cn.load_checkpoint(path)


def test_model_names_are_case_insensitive(tmp_path, saved):
    metadata, arrays = saved
    path = write_npz(tmp_path / "lower.npz", set_path(metadata, "model.name", "simplecnn"),
                     arrays)
    checkpoint = cn.load_checkpoint(path)
    assert checkpoint.build_model().config()["name"] == "SimpleCNN"


def test_extra_or_missing_parameters_are_named(tmp_path, saved):
    metadata, arrays = saved
    extra = write_npz(tmp_path / "extra.npz", metadata, {**arrays, "model/fc3.W": arrays["model/fc2.W"]})
    with pytest.raises(ValueError, match=r"extra\.npz: entries \['model/fc3.W'\] are not parameters"):
        cn.load_checkpoint(extra)
    del arrays["model/conv1.b"]
    missing = write_npz(tmp_path / "missing.npz", metadata, arrays)
    with pytest.raises(ValueError, match=r"missing\.npz: lacks the parameters \['conv1.b'\]"):
        cn.load_checkpoint(missing)


def test_a_checkpoint_without_its_buffers_names_them(tmp_path, rng):
    model = cn.models.resnet20(input_shape=(1, 8, 8), num_classes=3, rng=rng)
    metadata, arrays = read_npz(cn.save_checkpoint(tmp_path / "full.npz", model))
    del arrays["model/layer2.0.bn1.running_var"], arrays["model/bn1.num_batches_tracked"]
    missing = write_npz(tmp_path / "missing.npz", metadata, arrays)
    with pytest.raises(ValueError, match=r"missing\.npz: lacks the buffers \['bn1\."
                                         r"num_batches_tracked', 'layer2\.0\.bn1\.running_var'\] "
                                         r"of its architecture"):
        cn.load_checkpoint(missing)
    del arrays["model/fc.b"]
    write_npz(missing, metadata, arrays)
    with pytest.raises(ValueError, match=r"lacks the parameters \['fc\.b'\] and the buffers "):
        cn.load_checkpoint(missing)


def test_metadata_that_could_not_be_read_back_is_not_written(tmp_path, rng):
    model, _ = trained_pair(rng)
    path = cn.save_checkpoint(tmp_path / "last.npz", model)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="metadata must be plain JSON without NaN"):
        cn.save_checkpoint(path, model, metadata={"score": float("nan")})
    assert path.read_bytes() == before
