"""`cnnumpy summary` and `cnnumpy plot KIND` on a tiny checkpoint and data set of tmp_path."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import cnnumpy as cn
from cnnumpy.cli import main
from cnnumpy.data import FASHION_MNIST_CLASSES
from cnnumpy.data.idx import write_idx_split


def cnnumpy(*args, cwd):
    result = subprocess.run([sys.executable, "-m", "cnnumpy", *map(str, args)], cwd=cwd,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder with metrics.jsonl and best.npz of SimpleCNN on 28x28 images, and a test
    split of 30 such images in the Fashion-MNIST format."""
    root = tmp_path_factory.mktemp("insight")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 30)
    images = (rng.integers(0, 30, (30, 28, 28)) + labels[:, None, None] * 22).astype(np.uint8)
    write_idx_split(root / "data" / "fashion-mnist", "test", images, labels)
    model = cn.SimpleCNN((1, 28, 28), 10, rng=rng)
    run_dir = root / "run"
    run_dir.mkdir()
    cn.save_checkpoint(run_dir / "best.npz", model, metadata={
        "class_names": list(FASHION_MNIST_CLASSES), "dataset": "fashion-mnist"},
        arrays={"normalization/mean": np.float32([0.4]), "normalization/std": np.float32([0.2])})
    entries = [{"epoch": e, "lr": 0.1, "train_loss": 1 / e, "train_acc": 0.5 + e / 10,
                "val_loss": 1.1 / e, "val_acc": 0.45 + e / 10, "seconds": 1.0} for e in (1, 2, 3)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    Image.fromarray(rng.integers(0, 255, (20, 16, 3), dtype=np.uint8)).save(root / "pic.png")
    return root


def _check_png(path, size=(800, 400)):
    with Image.open(path) as png:
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.shape[:2] == size[::-1] and pixels.std() > 0


def test_summary_of_a_model_and_of_a_checkpoint(run):
    table = cnnumpy("summary", "--model", "simplecnn", "--input-shape", "3,32,32", cwd=run)
    assert table.startswith("Model: SimpleCNN, input (3, 32, 32)\n")
    assert "Total parameters: 2,122,186\n" in table
    assert table.splitlines()[4].split() == ["conv1", "Conv2D", "(32,", "32,", "32)", "896",
                                             "884,736", "3", "1"]
    table = cnnumpy("summary", "run/best.npz", cwd=run)
    assert table.startswith("Model: SimpleCNN, input (1, 28, 28)\n")
    assert table.splitlines()[9].split()[:3] == ["pool2", "MaxPool2D", "(64,"]


def test_every_plot_kind(run, monkeypatch, capsys):
    out = cnnumpy("plot", "curves", "run", "--out", "figs/curves.png", cwd=run)
    assert out.strip() == "figs/curves.png"
    _check_png(run / "figs" / "curves.png", (1200, 400))
    monkeypatch.chdir(run)
    data = ["--data-dir", "data"]
    for kind, args, size in [
        ("filters", ["run/best.npz"], (600, 600)),
        ("features", ["run/best.npz", "pic.png"], (1000, 600)),
        ("confusion", ["run/best.npz", *data], (800, 700)),
        ("mistakes", ["run/best.npz", *data, "--count", "4"], (800, 800)),
        ("saliency", ["run/best.npz", "test:2", *data, "--target", "Bag"], (900, 320)),
        ("receptive-field", ["run/best.npz", "test:0", *data, "--layer", "conv2",
                             "--unit", "1,2", "--channel", "3"], (800, 400)),
    ]:
        assert main(["plot", kind, *args, "--out", f"{kind}.png"]) == 0, kind
        assert capsys.readouterr().out.strip() == f"{kind}.png"
        _check_png(run / f"{kind}.png", size)
    assert main(["plot", "saliency", "run/best.npz", "pic.png"]) == 0
    _check_png(run / "saliency.png", (900, 320))  # the default name


@pytest.mark.parametrize("args, message", [
    (["summary"], "give either a CHECKPOINT or --model"),
    (["summary", "run/best.npz", "--model", "simplecnn"], "give either a CHECKPOINT or --model"),
    (["plot", "curves", "data"], "no metrics log"),
    (["plot", "saliency", "run/best.npz", "test:99", "--data-dir", "data"],
     "test:99: the test set has 30 images"),
    (["plot", "saliency", "run/best.npz", "pic.png", "--target", "Hat"],
     "--target 'Hat' is not a class"),
    (["plot", "receptive-field", "run/best.npz", "pic.png", "--layer", "fc1"],
     "layer 'fc1' has no spatial output"),
    (["plot", "filters", "run/best.npz", "--out", "filters.jpg"], "must end in .png"),
])
def test_errors_are_one_line(run, monkeypatch, capsys, args, message):
    monkeypatch.chdir(run)
    assert main(args) == 1
    error = capsys.readouterr().err
    assert error.startswith("cnnumpy: error: ") and message in error and error.count("\n") == 1


def test_bad_shapes_are_usage_errors(run, capsys):
    with pytest.raises(SystemExit) as usage:
        main(["summary", "--model", "simplecnn", "--input-shape", "3,32"])
    assert usage.value.code == 2 and "must be C,H,W" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plot", "receptive-field", "x.npz", "pic.png", "--unit", "1"])
    assert "must be ROW,COLUMN" in capsys.readouterr().err
