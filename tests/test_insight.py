"""The numbers behind the figures and the explorer: a unit's and a class score's input
gradients, receptive-field boxes, confusion counts, the mistakes picked, the metrics log."""

import json

import numpy as np
import pytest

import cnnumpy as cn
from cnnumpy import insight


@pytest.fixture
def model():
    return cn.SimpleCNN((1, 12, 12), 3, rng=np.random.default_rng(0))


@pytest.fixture
def image():
    return np.random.default_rng(1).standard_normal((1, 12, 12)).astype(np.float32)


def test_rescale_and_mosaic():
    np.testing.assert_allclose(insight.rescale(np.array([[2.0, 4.0], [3.0, 6.0]])),
                               [[0, 0.5], [0.25, 1]])
    assert (insight.rescale(np.full((2, 3), 7.0)) == 0.5).all()
    tiles = np.stack([np.arange(4.0).reshape(2, 2), np.full((2, 2), -1.0), -np.eye(2)])
    grid = insight.mosaic(tiles, columns=2, gap=1)  # two rows of two tiles, the last one empty
    assert grid.shape == (5, 5)
    np.testing.assert_allclose(grid[:2, :2], np.arange(4).reshape(2, 2) / 3)  # each rescaled
    assert (grid[:2, 3:] == 0.5).all()  # a constant tile
    np.testing.assert_allclose(grid[3:, :2], 1 - np.eye(2))
    assert np.isnan(grid[2]).all() and np.isnan(grid[:, 2]).all()  # the gaps
    assert np.isnan(grid[3:, 3:]).all()  # the empty cell


def test_read_metrics(tmp_path):
    entries = [{"epoch": e, "lr": 0.1 / e, "train_loss": 2 / e, "train_acc": 1 - 1 / (e + 1),
                "val_loss": 2.2 / e, "val_acc": 0.9 - 1 / (e + 2), "seconds": 1.5}
               for e in range(1, 5)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    assert insight.read_metrics(tmp_path) == entries


def test_read_metrics_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no metrics log .*metrics.jsonl"):
        insight.read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2,\n')
    with pytest.raises(ValueError, match=r"line 2: not JSON"):
        insight.read_metrics(tmp_path)


def test_confusion_matrix_counts():
    labels = np.array([0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    assert insight.confusion_matrix(labels, predicted, 3).tolist() == [[1, 1, 0], [0, 2, 1],
                                                                       [1, 0, 0]]
    with pytest.raises(ValueError, match=r"predictions must be classes in \[0, 3\)"):
        insight.confusion_matrix(labels, predicted + 1, 3)


def test_confident_mistake_indices():
    labels = np.array([0, 1, 2, 0, 1, 2])
    probabilities = np.array([[0.9, 0.05, 0.05],   # right
                              [0.6, 0.3, 0.1],     # wrong, 0.6
                              [0.1, 0.85, 0.05],   # wrong, 0.85
                              [0.2, 0.7, 0.1],     # wrong, 0.7
                              [0.1, 0.8, 0.1],     # right
                              [0.3, 0.3, 0.4]])    # right
    assert insight.confident_mistake_indices(labels, probabilities, 2).tolist() == [2, 3]
    assert insight.confident_mistake_indices(labels, probabilities, 9).tolist() == [2, 3, 1]


def test_saliency_of_a_linear_model_is_its_weights():
    rng = np.random.default_rng(0)
    linear = cn.Linear(3 * 5 * 5, 4, rng=rng, dtype=np.float64)
    model = cn.Sequential([cn.Flatten(), linear])
    image = rng.standard_normal((3, 5, 5))
    gradient, target = insight.saliency(model, image, target=2)
    assert target == 2
    np.testing.assert_allclose(gradient, np.abs(linear.W[2].reshape(3, 5, 5)).max(axis=0))
    _, predicted = insight.saliency(model, image)
    assert predicted == int(model.forward(image[None]).argmax())


def test_saliency_errors(model, image):
    with pytest.raises(ValueError, match=r"target must be a class in \[0, 3\), got 7"):
        insight.saliency(model, image, target=7)
    with pytest.raises(ValueError, match=r"shape \(C, H, W\) with C = 1 or 3, got \(12, 12\)"):
        insight.saliency(model, image[0])


def test_receptive_field_box_of_a_residual_block():
    rng = np.random.default_rng(0)
    model = cn.Sequential({"conv": cn.Conv2D(1, 2, 3, padding=1, rng=rng),
                           "block": cn.Residual({"conv1": cn.Conv2D(2, 2, 3, padding=1,
                                                                    rng=rng)})})
    # conv: r 3 from -1; block: the union of conv1's 5 from -2 and the identity's 3 from -1
    assert insight.receptive_field_box(model, "block", (0, 0), (1, 12, 12)) == (-2, -2, 5, 5)


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
        top, left, height, width = insight.receptive_field_box(model, layer, unit, image.shape)
        rows, cols = np.nonzero(insight.unit_gradient(model, image, layer, unit, channel=1)[0])
        assert (rows.min(), rows.max()) == (max(top, 0), min(top + height, 20) - 1)
        assert (cols.min(), cols.max()) == (max(left, 0), min(left + width, 20) - 1)
    # by hand for b: height r 3, 4, 8 j 1, 2, 4 start -1; width r 3, 4, 12 j 1, 2, 4 start -5
    box = insight.receptive_field_box(model, "b", (1, 2), (1, 20, 20))
    assert box == (-1 + 4, -5 + 8, 8, 12)


def test_unit_gradient_lies_in_the_box_and_its_errors(model, image):
    # in SimpleCNN the gradient of a unit stays inside its box (ReLU and max-pool thin it out)
    top, left, height, width = insight.receptive_field_box(model, "pool2", (1, 1))
    assert (top, left, height, width) == (-3 + 4, -3 + 4, 10, 10)
    rows, cols = np.nonzero(insight.unit_gradient(model, image, "pool2", (1, 1))[0])
    assert rows.size and top <= rows.min() and rows.max() < top + height
    assert left <= cols.min() and cols.max() < left + width
    with pytest.raises(ValueError, match=r"fc1' has no spatial output"):
        insight.unit_gradient(model, image, "fc1", (0, 0))
    with pytest.raises(ValueError, match=r"unit \(3, 0\) is outside the output of 'pool2'"):
        insight.unit_gradient(model, image, "pool2", (3, 0))
    with pytest.raises(ValueError, match=r"unit \(0, 0\) of map 64 is outside"):
        insight.unit_gradient(model, image, "pool2", (0, 0), channel=64)
