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
    """A drawn PNG of the size asked for (what goes into each drawing is checked by
    test_plot_commands_draw_the_checkpoints_model_on_the_chosen_data)."""
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


def test_plot_commands_draw_the_checkpoints_model_on_the_chosen_data(run, monkeypatch, capsys):
    """What each `cnnumpy plot KIND` hands to the drawing function: the checkpoint's weights,
    the image or test set it names, normalised as in training, the model's own predictions,
    and the options (the pictures themselves are checked in test_plots.py)."""
    from pathlib import Path

    from cnnumpy import plots
    from cnnumpy.data import load_dataset, normalize
    from cnnumpy.data.images import load_images

    drawn = {}

    def recorder(name):
        def draw(*args, **kwargs):
            drawn[name] = (args, kwargs)
            return Path(f"{name}.png")
        return draw

    for name in ("learning_curves", "first_layer_filters", "feature_maps",
                 "confusion_matrix_plot", "confident_mistakes", "saliency_map",
                 "receptive_field_plot"):
        monkeypatch.setattr(plots, name, recorder(name))
    monkeypatch.chdir(run)
    saved = cn.load_checkpoint("run/best.npz").build_model()
    test = load_dataset("fashion-mnist", "test", data_dir="data", download=False)
    scaled = normalize(test.images, [0.4], [0.2])
    probabilities = cn.predict_proba(saved, test.images, (0.4, 0.2))
    data = ["--data-dir", "data"]

    def model_is_saved(model):
        state, saved_state = model.state_dict(), saved.state_dict()
        assert list(state) == list(saved_state)
        for name, value in state.items():
            np.testing.assert_array_equal(value, saved_state[name])

    assert main(["plot", "curves", "run"]) == 0
    history = drawn["learning_curves"][0][0]
    assert [entry["val_acc"] for entry in history] == pytest.approx([0.55, 0.65, 0.75])
    assert main(["plot", "filters", "run/best.npz"]) == 0
    model_is_saved(drawn["first_layer_filters"][0][0])
    assert main(["plot", "features", "run/best.npz", "pic.png"]) == 0
    (model, image, _), _ = drawn["feature_maps"]
    model_is_saved(model)
    np.testing.assert_array_equal(image, normalize(load_images(["pic.png"], (1, 28, 28))[1],
                                                   [0.4], [0.2])[0])
    assert main(["plot", "confusion", "run/best.npz", *data]) == 0
    (labels, predicted, names, _), _ = drawn["confusion_matrix_plot"]
    np.testing.assert_array_equal(labels, test.labels)
    np.testing.assert_array_equal(predicted, probabilities.argmax(axis=1))
    assert list(names) == list(FASHION_MNIST_CLASSES)
    assert main(["plot", "mistakes", "run/best.npz", *data, "--count", "4"]) == 0
    (images, labels, shown_probabilities, names, _), options = drawn["confident_mistakes"]
    np.testing.assert_array_equal(images, test.images)
    np.testing.assert_allclose(shown_probabilities, probabilities, rtol=1e-6)
    assert options == {"count": 4}
    assert main(["plot", "saliency", "run/best.npz", "test:2", *data, "--target", "Bag"]) == 0
    (model, image, _), options = drawn["saliency_map"]
    model_is_saved(model)
    np.testing.assert_array_equal(image, scaled[2])
    assert options["target"] == FASHION_MNIST_CLASSES.index("Bag")
    assert main(["plot", "receptive-field", "run/best.npz", "test:0", *data, "--layer",
                 "conv2", "--unit", "1,2", "--channel", "3"]) == 0
    (model, image, _), options = drawn["receptive_field_plot"]
    np.testing.assert_array_equal(image, scaled[0])
    assert options == {"layer": "conv2", "unit": (1, 2), "channel": 3}
    capsys.readouterr()


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
