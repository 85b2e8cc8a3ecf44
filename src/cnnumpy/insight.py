"""What a trained network sees, as arrays: gradients, receptive fields, counts (NumPy only).

Every function takes arrays and models (no file names of data sets: the caller loads data) and
returns arrays or numbers; nothing here draws. `cnnumpy.plots` draws them as PNG figures
(matplotlib) and the explorer (`cnnumpy.explore`) sends them to its web page, so the figures
and the page show the same numbers:

    unit_gradient(model, image, layer, unit)             d unit / d input: (C, H, W)
    receptive_field_box(model, layer, unit)              the input pixels one unit sees
    saliency(model, image)                               |d class score / d input|: (H, W)
    confusion_matrix(labels, predicted, num_classes)     counts (K, K)
    confident_mistake_indices(labels, probabilities, count)
    read_metrics(run_dir)                                the per-epoch lines of metrics.jsonl
    rescale(array), mosaic(tiles, columns)               values onto [0, 1]; maps in a grid

Images are single samples (C, H, W), floating point as the model sees them (normalised) or
uint8 pixels. The functions that run the model record one forward pass (`cnnumpy.trace`, in
evaluation mode), so they work for any tree of modules: a layer or a block of a residual
network is named as in `model.named_modules()` ("layer2.0.conv1", "layer2.0").
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from . import trace
from .shapes import field_box, traced_fields
from .train import METRICS_FILE


# --------------------------------------------------------------------------- images


def _check_image(image, what: str = "image") -> np.ndarray:
    """A single (C, H, W) image with C in {1, 3}; ValueError/TypeError otherwise."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{what} must be a NumPy array (C, H, W), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"{what} must have shape (C, H, W) with C = 1 or 3, got {image.shape}")
    return image


def rescale(array: np.ndarray) -> np.ndarray:
    """Map the values of `array` linearly onto [0, 1] (a constant array becomes 0.5)."""
    array = np.asarray(array, dtype=np.float64)
    low, high = array.min(), array.max()
    if high == low:
        return np.full(array.shape, 0.5)
    return (array - low) / (high - low)


def mosaic(tiles: np.ndarray, columns: int, gap: int = 1) -> np.ndarray:
    """Tiles (N, h, w[, 3]) in a grid of `columns`, each rescaled to [0, 1] as `rescale` does,
    NaN in the gaps."""
    count, h, w = tiles.shape[:3]
    rows = math.ceil(count / columns)
    tiles = np.asarray(tiles, dtype=np.float64)
    each = tuple(range(1, tiles.ndim))
    low, high = tiles.min(axis=each, keepdims=True), tiles.max(axis=each, keepdims=True)
    span = high - low
    scaled = np.where(span > 0, (tiles - low) / np.where(span > 0, span, 1.0), 0.5)
    cells = np.full((rows * columns, h + gap, w + gap, *tiles.shape[3:]), np.nan)
    cells[:count, :h, :w] = scaled
    grid = cells.reshape(rows, columns, h + gap, w + gap, *tiles.shape[3:]).swapaxes(1, 2)
    grid = grid.reshape(rows * (h + gap), columns * (w + gap), *tiles.shape[3:])
    return grid[:rows * (h + gap) - gap, :columns * (w + gap) - gap]


# --------------------------------------------------------------------------- running layers


def _batch_of_one(model, image: np.ndarray) -> np.ndarray:
    """(C, H, W) image -> (1, C, H, W) in the model's dtype."""
    image = _check_image(image)
    return image[None].astype(model.dtype or np.float32)


def _image_call(recorded: "trace.Trace", layer: str) -> "trace.Call":
    """The call of `layer` in a trace, which must give images (a convolution, pool or block)."""
    call = recorded.call(layer)
    if call.output.ndim != 4:
        raise ValueError(f"layer {layer!r} has no spatial output (shape "
                         f"{call.output.shape[1:]}); choose a convolution, a pool or a block")
    return call


def unit_gradient(model, image: np.ndarray, layer: str, unit: tuple[int, int],
                  channel: int | None = None) -> np.ndarray:
    """Gradient of one unit of `layer`'s output with respect to the input image.

    The unit is at (row, column) of the layer's output maps, in map `channel`, or summed over
    all maps when channel is None. `layer` is any module that outputs images (a convolution,
    a pool, a residual block). One forward pass is recorded and the gradient goes back from
    that unit through the layers it depends on (`cnnumpy.trace.backward_from`); its non-zero
    pixels lie inside the unit's receptive field (`receptive_field_box`). Returns (C, H, W).
    """
    with trace.preserved(model):
        recorded = trace.record(model, _batch_of_one(model, image), keep_cache=True)
        out = _image_call(recorded, layer).output
        row, column = unit
        channels = slice(None) if channel is None else channel
        if not (0 <= row < out.shape[2] and 0 <= column < out.shape[3]) or not (
                channel is None or 0 <= channel < out.shape[1]):
            where = f"unit {tuple(unit)}" + ("" if channel is None else f" of map {channel}")
            raise ValueError(f"{where} is outside the output of {layer!r}, of shape "
                             f"{out.shape[1:]} (maps, rows, columns)")
        dout = np.zeros_like(out)
        dout[0, channels, row, column] = 1
        with trace.evaluation(model):
            return trace.backward_from(recorded, out, dout)[0]


def receptive_field_box(model, layer: str, unit: tuple[int, int],
                        input_shape=None) -> tuple[int, int, int, int]:
    """(top, left, height, width) in input pixels of the field of unit (row, column) of `layer`.

    From the traced receptive fields (`cnnumpy.shapes.traced_fields`) of one forward pass on
    an input of `input_shape` (default the model's `input_shape`): top = start + row · jump
    along the height (left likewise along the width), height and width the field sizes.
    Negative or too large coordinates lie in the padding, outside the image.
    """
    input_shape = getattr(model, "input_shape", None) if input_shape is None else input_shape
    if input_shape is None:
        raise ValueError("pass input_shape=(C, H, W): the model has no input_shape")
    recorded = trace.record(model, np.zeros((1, *input_shape), model.dtype or np.float32))
    return field_box(traced_fields(recorded)[id(_image_call(recorded, layer).output)], unit)


def saliency(model, image: np.ndarray, target: int | None = None) -> tuple[np.ndarray, int]:
    """|d score_target / d input| of one image, the largest over channels, and the target.

    score_target is the model's output (logit) for class `target` (default: the predicted
    class); the gradient comes from `model.backward` of a one-hot upstream gradient.
    Returns ((H, W) float array, target).
    """
    x = _batch_of_one(model, image)
    with trace.preserved(model), trace.evaluation(model):
        logits = model.forward(x)
        if target is None:
            target = int(logits[0].argmax())
        if not 0 <= target < logits.shape[1]:
            raise ValueError(f"target must be a class in [0, {logits.shape[1]}), got {target}")
        dout = np.zeros_like(logits)
        dout[0, target] = 1
        dx = model.backward(dout)
    return np.abs(dx[0]).max(axis=0), target


# --------------------------------------------------------------------------- metrics


def read_metrics(run_dir) -> list[dict]:
    """The per-epoch entries of `run_dir/metrics.jsonl` (one JSON object a line)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no metrics log {path}: is {run_dir} a training run directory?")
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not JSON ({err.msg})") from None
    return entries


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j] = how many images of class i were predicted as class j: (K, K) int64."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    if labels.shape != predicted.shape or labels.ndim != 1:
        raise ValueError(f"labels and predictions must be two vectors of the same length, got "
                         f"shapes {labels.shape} and {predicted.shape}")
    for what, values in (("labels", labels), ("predictions", predicted)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{what} must be classes in [0, {num_classes}), got range "
                             f"[{values.min()}, {values.max()}]")
    counts = np.bincount(labels * num_classes + predicted, minlength=num_classes ** 2)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def confident_mistake_indices(labels: np.ndarray, probabilities: np.ndarray,
                              count: int) -> np.ndarray:
    """Indices of at most `count` misclassified images, most confident prediction first.

    labels: (N,) true classes; probabilities: (N, K). Ties keep the data set's order.
    """
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:count]
