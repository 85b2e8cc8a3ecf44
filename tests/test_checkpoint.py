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
