"""Every plot renders a non-blank PNG of the requested size (the numbers behind them are
`cnnumpy.insight`'s, tested in test_insight.py)."""

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


def test_learning_curves(tmp_path):
    history = [{"epoch": e, "lr": 0.1 / e, "train_loss": 2 / e, "train_acc": 1 - 1 / (e + 1),
                "val_loss": 2.2 / e, "val_acc": 0.9 - 1 / (e + 2), "seconds": 1.5}
               for e in range(1, 5)]
    path = plots.learning_curves(history, tmp_path / "curves.png", figsize=(9, 3), dpi=DPI)
    assert path == tmp_path / "curves.png"
    _pixels(path, (9, 3))
    # a run without validation data has only the training curves
    train_only = [{k: v for k, v in e.items() if not k.startswith("val")} for e in history]
    _pixels(plots.learning_curves(train_only, tmp_path / "t.png", figsize=(9, 3), dpi=DPI),
            (9, 3))
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


def test_confusion_matrix_plot(tmp_path):
    labels = np.array([0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    path = plots.confusion_matrix_plot(labels, predicted, CLASSES, tmp_path / "c.png",
                                       figsize=(5, 4), dpi=DPI)
    _pixels(path, (5, 4))


def test_confident_mistakes(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 1, 8, 8), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    predicted = np.array([0, 0, 1, 1, 1, 0])  # four mistakes
    probabilities = np.full((6, 3), 0.15)
    probabilities[np.arange(6), predicted] = 0.7
    path = plots.confident_mistakes(images, labels, probabilities, CLASSES, tmp_path / "m.png",
                                    count=4, figsize=(4, 4), dpi=DPI)
    _pixels(path, (4, 4))


def test_saliency_map(tmp_path, model, image):
    path = plots.saliency_map(model, image, tmp_path / "s.png", class_names=CLASSES,
                              figsize=(6, 2.5), dpi=DPI)
    _pixels(path, (6, 2.5))


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


def test_receptive_field_plot(tmp_path, model, image):
    for unit in (None, (0, 0)):  # the centre, and a corner whose field reaches the padding
        path = plots.receptive_field_plot(model, image, tmp_path / f"rf{unit}.png", unit=unit,
                                          figsize=(6, 3), dpi=DPI)
        _pixels(path, (6, 3))
    with pytest.raises(ValueError, match=r"no module named 'conv9' ran"):
        plots.receptive_field_plot(model, image, tmp_path / "x.png", layer="conv9")


def test_path_must_be_png_and_matplotlib_missing_is_explained(tmp_path, model, monkeypatch):
    with pytest.raises(ValueError, match=r"must end in .png, got .*filters.jpg"):
        plots.first_layer_filters(model, tmp_path / "filters.jpg")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'cnnumpy\[plot\]'"):
        plots.first_layer_filters(model, tmp_path / "filters.png")
