"""Every plot renders a non-blank PNG of the requested size; the numbers behind them are right."""

import json
import sys

import numpy as np
import pytest

import cnnumpy as cn
from cnnumpy import plots

from PIL import Image  # noqa: E402

DPI = 40
CLASSES = ("cat", "dog", "bird")


def _pixels(path, figsize):
    """The PNG at `path` as (H, W, 3) uint8, after checking it has figsize·DPI pixels."""
    with Image.open(path) as png:
        assert png.format == "PNG"
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.shape == (round(figsize[1] * DPI), round(figsize[0] * DPI), 3)
    assert pixels.std() > 0  # not blank
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # more than a frame and text
    return pixels


@pytest.fixture
def model():
    return cn.SimpleCNN((1, 12, 12), len(CLASSES), rng=np.random.default_rng(0))


@pytest.fixture
def image():
    return np.random.default_rng(1).standard_normal((1, 12, 12)).astype(np.float32)


def test_learning_curves_from_a_metrics_log(tmp_path):
    entries = [{"epoch": e, "lr": 0.1 / e, "train_loss": 2 / e, "train_acc": 1 - 1 / (e + 1),
                "val_loss": 2.2 / e, "val_acc": 0.9 - 1 / (e + 2), "seconds": 1.5}
               for e in range(1, 5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    history = plots.read_metrics(tmp_path)
    assert history == entries
    path = plots.learning_curves(history, tmp_path / "curves.png", figsize=(9, 3), dpi=DPI)
    assert path == tmp_path / "curves.png"
    _pixels(path, (9, 3))
    # a run without validation data has only the training curves
    train_only = [{k: v for k, v in e.items() if not k.startswith("val")} for e in entries]
    _pixels(plots.learning_curves(train_only, tmp_path / "t.png", figsize=(9, 3), dpi=DPI),
            (9, 3))


def test_read_metrics_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no metrics log .*metrics.jsonl"):
        plots.read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2,\n')
    with pytest.raises(ValueError, match=r"line 2: not JSON"):
        plots.read_metrics(tmp_path)
    with pytest.raises(ValueError, match=r"history is empty"):
        plots.learning_curves([], tmp_path / "x.png")


def test_first_layer_filters_grey_and_rgb(tmp_path, model):
    _pixels(plots.first_layer_filters(model, tmp_path / "grey.png", figsize=(4, 4), dpi=DPI),
            (4, 4))
    rgb = cn.Sequential([cn.Conv2D(3, 6, 5, rng=np.random.default_rng(0))])
    pixels = _pixels(plots.first_layer_filters(rgb, tmp_path / "rgb.png", figsize=(4, 4),
                                               dpi=DPI), (4, 4))
    assert (pixels.max(axis=2) - pixels.min(axis=2)).max() > 50  # colour, not grey
    with pytest.raises(ValueError, match=r"no Conv2D layer"):
        plots.first_layer_filters(cn.Sequential([cn.Flatten()]), tmp_path / "none.png")


def test_feature_maps(tmp_path, model, image):
    _pixels(plots.feature_maps(model, image, tmp_path / "f.png", figsize=(6, 4), dpi=DPI),
            (6, 4))
    with pytest.raises(ValueError, match=r"shape \(C, H, W\) with C = 1 or 3, got \(12, 12\)"):
        plots.feature_maps(model, image[0], tmp_path / "bad.png")


def test_confusion_matrix_counts_and_plot(tmp_path):
    labels = np.array([0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    assert plots.confusion_matrix(labels, predicted, 3).tolist() == [[1, 1, 0], [0, 2, 1],
                                                                     [1, 0, 0]]
    path = plots.confusion_matrix_plot(labels, predicted, CLASSES, tmp_path / "c.png",
                                       figsize=(5, 4), dpi=DPI)
    _pixels(path, (5, 4))
    with pytest.raises(ValueError, match=r"predictions must be classes in \[0, 3\)"):
        plots.confusion_matrix(labels, predicted + 1, 3)


def test_confident_mistakes(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 1, 8, 8), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    probabilities = np.array([[0.9, 0.05, 0.05],   # right
                              [0.6, 0.3, 0.1],     # wrong, 0.6
                              [0.1, 0.85, 0.05],   # wrong, 0.85
                              [0.2, 0.7, 0.1],     # wrong, 0.7
                              [0.1, 0.8, 0.1],     # right
                              [0.3, 0.3, 0.4]])    # right
    assert plots.confident_mistake_indices(labels, probabilities, 2).tolist() == [2, 3]
    assert plots.confident_mistake_indices(labels, probabilities, 9).tolist() == [2, 3, 1]
    path = plots.confident_mistakes(images, labels, probabilities, CLASSES, tmp_path / "m.png",
                                    count=4, figsize=(4, 4), dpi=DPI)
    _pixels(path, (4, 4))


def test_saliency_of_a_linear_model_is_its_weights(tmp_path):
    rng = np.random.default_rng(0)
    linear = cn.Linear(3 * 5 * 5, 4, rng=rng, dtype=np.float64)
    model = cn.Sequential([cn.Flatten(), linear])
    image = rng.standard_normal((3, 5, 5))
    gradient, target = plots.saliency(model, image, target=2)
    assert target == 2
    np.testing.assert_allclose(gradient, np.abs(linear.W[2].reshape(3, 5, 5)).max(axis=0))
    _, predicted = plots.saliency(model, image)
    assert predicted == int(model.forward(image[None]).argmax())


def test_saliency_map(tmp_path, model, image):
    path = plots.saliency_map(model, image, tmp_path / "s.png", class_names=CLASSES,
                              figsize=(6, 2.5), dpi=DPI)
    _pixels(path, (6, 2.5))
    with pytest.raises(ValueError, match=r"target must be a class in \[0, 3\), got 7"):
        plots.saliency(model, image, target=7)


def test_receptive_field_plot_of_a_branched_model(tmp_path, image):
    """The default layer of a model with a residual block: the last image-shaped module."""
    rng = np.random.default_rng(0)
    model = cn.Sequential({"conv": cn.Conv2D(1, 2, 3, padding=1, rng=rng),
                           "block": cn.Residual({"conv1": cn.Conv2D(2, 2, 3, padding=1,
                                                                    rng=rng)}),
                           "pool": cn.GlobalAvgPool2D()})
    path = plots.receptive_field_plot(model, image, tmp_path / "rf.png", figsize=(6, 3),
                                      dpi=DPI)
    _pixels(path, (6, 3))
    # conv: r 3 from -1; block: the union of conv1's 5 from -2 and the identity's 3 from -1
    assert plots.receptive_field_box(model, "block", (0, 0), image.shape) == (-2, -2, 5, 5)


def test_receptive_field_box_is_the_gradient_support():
    """Without ReLU or max-pool every pixel of the field reaches the unit: the support of the
    unit's input gradient is exactly the box, clipped to the image."""
    rng = np.random.default_rng(0)
    model = cn.Sequential({"a": cn.Conv2D(1, 2, 3, padding=1, rng=rng, dtype=np.float64),
                           "pool": cn.AvgPool2D(2),
                           "b": cn.Conv2D(2, 2, (3, 5), stride=2, padding=(0, 2), rng=rng,
                                          dtype=np.float64)})
    image = rng.standard_normal((1, 20, 20))
    for layer, unit in (("b", (1, 2)), ("b", (0, 0)), ("pool", (9, 9)), ("a", (0, 19))):
        top, left, height, width = plots.receptive_field_box(model, layer, unit, image.shape)
        rows, cols = np.nonzero(plots.unit_gradient(model, image, layer, unit, channel=1)[0])
        assert (rows.min(), rows.max()) == (max(top, 0), min(top + height, 20) - 1)
        assert (cols.min(), cols.max()) == (max(left, 0), min(left + width, 20) - 1)
    # by hand for b: height r 3, 4, 8 j 1, 2, 4 start -1; width r 3, 4, 12 j 1, 2, 4 start -5
    assert plots.receptive_field_box(model, "b", (1, 2), (1, 20, 20)) == (-1 + 4, -5 + 8, 8, 12)


def test_receptive_field_plot(tmp_path, model, image):
    # in SimpleCNN the gradient of a unit stays inside its box (ReLU and max-pool thin it out)
    top, left, height, width = plots.receptive_field_box(model, "pool2", (1, 1))
    assert (top, left, height, width) == (-3 + 4, -3 + 4, 10, 10)
    rows, cols = np.nonzero(plots.unit_gradient(model, image, "pool2", (1, 1))[0])
    assert rows.size and top <= rows.min() and rows.max() < top + height
    assert left <= cols.min() and cols.max() < left + width
    for unit in (None, (0, 0)):  # the centre, and a corner whose field reaches the padding
        path = plots.receptive_field_plot(model, image, tmp_path / f"rf{unit}.png", unit=unit,
                                          figsize=(6, 3), dpi=DPI)
        _pixels(path, (6, 3))
    with pytest.raises(ValueError, match=r"no module named 'conv9' ran"):
        plots.receptive_field_plot(model, image, tmp_path / "x.png", layer="conv9")
    with pytest.raises(ValueError, match=r"fc1' has no spatial output"):
        plots.unit_gradient(model, image, "fc1", (0, 0))
    with pytest.raises(ValueError, match=r"unit \(3, 0\) is outside the output of 'pool2'"):
        plots.unit_gradient(model, image, "pool2", (3, 0))
    with pytest.raises(ValueError, match=r"unit \(0, 0\) of map 64 is outside"):
        plots.unit_gradient(model, image, "pool2", (0, 0), channel=64)


def test_path_must_be_png_and_matplotlib_missing_is_explained(tmp_path, model, monkeypatch):
    with pytest.raises(ValueError, match=r"must end in .png, got .*filters.jpg"):
        plots.first_layer_filters(model, tmp_path / "filters.jpg")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'cnnumpy\[plot\]'"):
        plots.first_layer_filters(model, tmp_path / "filters.png")
