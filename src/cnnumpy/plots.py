"""Figures of what a network learned, written as PNG files (needs the `plot` extra: matplotlib).

This module only draws: the numbers it shows (unit gradients, receptive-field boxes,
saliency, confusion counts, the mistakes picked) come from `cnnumpy.insight`, which needs
only NumPy and which the explorer (`cnnumpy explore`) shares.

Every function takes arrays and models (no file names of data sets: the caller loads data),
draws one figure, writes it to `path` as a PNG of `figsize` inches at `dpi` dots per inch
(so `figsize[0]·dpi` x `figsize[1]·dpi` pixels) and returns the path:

    learning_curves(history, path)                       loss, accuracy and lr per epoch
    first_layer_filters(model, path)                     the first convolution's kernels
    feature_maps(model, image, path)                     each convolution's output for one image
    confusion_matrix_plot(labels, predicted, class_names, path)
    confident_mistakes(images, labels, probabilities, class_names, path)
    saliency_map(model, image, path)                     |d class score / d input|
    receptive_field_plot(model, image, path)             the input pixels one unit sees

Images are single samples (C, H, W), floating point as the model sees them (normalised) or
uint8 pixels; they are shown rescaled to [0, 1]. The functions that run the model record one
forward pass (`cnnumpy.trace`, in evaluation mode), so they work for any tree of modules:
a layer or a block of a residual network is named as in `model.named_modules()`
("layer2.0.conv1", "layer2.0").

Drawing uses matplotlib's object API with the Agg canvas (`matplotlib.figure.Figure`), never
pyplot: no window opens and the process's matplotlib backend is left alone.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from . import trace
from .insight import (_batch_of_one, _check_image, _image_call, confident_mistake_indices,
                      confusion_matrix, mosaic, receptive_field_box, rescale, saliency,
                      unit_gradient)
from .layers import Conv2D

DEFAULT_DPI = 100


# --------------------------------------------------------------------------- figures


def _figure(figsize: tuple[float, float], dpi: int):
    """A new Agg-backed matplotlib Figure; ImportError with the install command if missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "cnnumpy's plots need matplotlib: pip install 'cnnumpy[plot]' (or pip install "
            "matplotlib)"
        ) from None
    width, height = figsize
    if not (width > 0 and height > 0) or isinstance(dpi, bool) or not isinstance(dpi, int) \
            or dpi < 1:
        raise ValueError(f"figsize must be two positive sizes in inches and dpi a positive "
                         f"integer, got figsize={figsize!r}, dpi={dpi!r}")
    return Figure(figsize=(width, height), dpi=dpi)


def _save(fig, path) -> Path:
    """Write `fig` as a PNG at its own size (no tight cropping) and return the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plots are written as PNG: the path must end in .png, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=fig.dpi)
    return path


def _hide_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------- images


def _displayable(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W) for one channel or (H, W, 3) for three, with values in [0, 1].

    uint8 pixels are divided by 255 (true intensities); floating images are rescaled.
    """
    image = _check_image(image)
    shown = image / 255.0 if image.dtype == np.uint8 else rescale(image)
    return shown[0] if shown.shape[0] == 1 else shown.transpose(1, 2, 0)


def _show(ax, image: np.ndarray, title: str | None = None) -> None:
    shown = _displayable(image)
    ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0.0, vmax=1.0,
              interpolation="nearest")
    _hide_ticks(ax)
    if title:
        ax.set_title(title, fontsize=8)


def _show_mosaic(ax, tiles: np.ndarray, columns: int, cmap: str = "gray",
                 gap_color: str = "white") -> None:
    grid = mosaic(tiles, columns)
    if grid.ndim == 3:  # RGB
        from matplotlib.colors import to_rgb

        grid = np.where(np.isnan(grid), np.array(to_rgb(gap_color)), grid)
        ax.imshow(grid, interpolation="nearest")
    else:
        from matplotlib import colormaps

        colors = colormaps[cmap].with_extremes(bad=gap_color)
        ax.imshow(np.ma.masked_invalid(grid), cmap=colors, vmin=0.0, vmax=1.0,
                  interpolation="nearest")
    _hide_ticks(ax)


# --------------------------------------------------------------------------- the plots


def learning_curves(history: Sequence[dict], path, *, figsize=(12, 4),
                    dpi: int = DEFAULT_DPI) -> Path:
    """Loss, accuracy and learning rate against the epoch, training and validation.

    history: per-epoch dicts with "epoch", "train_loss", "train_acc" and optionally
    "val_loss", "val_acc", "lr" (a fit's History, or `insight.read_metrics(run_dir)`).
    """
    from matplotlib.ticker import MaxNLocator

    if not history:
        raise ValueError("the history is empty: no epoch has finished yet")
    missing = {"epoch", "train_loss", "train_acc"} - set(history[0])
    if missing:
        raise ValueError(f"history entries need epoch, train_loss and train_acc; the first "
                         f"entry has {sorted(history[0])}")
    epochs = [entry["epoch"] for entry in history]
    fig = _figure(figsize, dpi)
    panels = fig.subplots(1, 3)
    for ax, metric, title in ((panels[0], "loss", "Loss"), (panels[1], "acc", "Accuracy")):
        for split, style in (("train", "o-"), ("val", "s-")):
            key = f"{split}_{metric}"
            points = [(e, entry[key]) for e, entry in zip(epochs, history) if key in entry]
            if points:
                ax.plot(*zip(*points), style, markersize=3, label=split)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    rates = [(e, entry["lr"]) for e, entry in zip(epochs, history) if "lr" in entry]
    if rates:
        panels[2].plot(*zip(*rates), "o-", markersize=3, color="tab:green")
    panels[2].set_title("Learning rate (end of epoch)")
    panels[2].grid(alpha=0.3)
    for ax in panels:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _save(fig, path)


def _first_convolution(model) -> tuple[str, Conv2D]:
    for name, layer in model.named_layers():
        if isinstance(layer, Conv2D):
            return name, layer
    raise ValueError(f"the model has no Conv2D layer: {[n for n, _ in model.named_layers()]}")


def first_layer_filters(model, path, *, max_filters: int = 64, figsize=(6, 6),
                        dpi: int = DEFAULT_DPI) -> Path:
    """The kernels of the first convolution as a grid of small images, each rescaled.

    Three input channels are shown as colour (RGB); otherwise the mean over input channels
    (for one channel, the kernel itself), in grey. At most `max_filters` are drawn.
    """
    name, conv = _first_convolution(model)
    weights = conv.W[:max_filters]  # (C_out, C_in, kH, kW)
    tiles = weights.transpose(0, 2, 3, 1) if conv.in_channels == 3 else weights.mean(axis=1)
    fig = _figure(figsize, dpi)
    ax = fig.subplots()
    # the gaps are coloured: white and black are kernel values here
    _show_mosaic(ax, tiles, columns=math.ceil(math.sqrt(len(tiles))), gap_color="#6b8fb5")
    kh, kw = conv.kernel_size
    ax.set_title(f"{name}: {len(tiles)} of {conv.out_channels} filters, {kh}x{kw}, "
                 f"{conv.in_channels} input channel{'s' if conv.in_channels > 1 else ''}",
                 fontsize=9)
    return _save(fig, path)


def _leaf_outputs(model, x: np.ndarray) -> list[tuple[str, object, np.ndarray]]:
    """(name, layer, output) of every leaf layer, in the order a forward pass of x runs them."""
    return [(call.name, call.module, call.output) for call in trace.record(model, x).leaves()]


def feature_maps(model, image: np.ndarray, path, *, max_channels: int = 16,
                 max_rows: int = 8, figsize=(10, 6), dpi: int = DEFAULT_DPI) -> Path:
    """The input image, then the output of each convolution (its first `max_channels`).

    Each map is rescaled on its own; one row per convolution, in the order they run. A deeper
    network (ResNet-20 has 21 convolutions) shows `max_rows` of them, evenly spaced from the
    first to the last.
    """
    outputs = _leaf_outputs(model, _batch_of_one(model, image))
    convolutions = [(name, out[0]) for name, layer, out in outputs if isinstance(layer, Conv2D)]
    if not convolutions:
        raise ValueError("the model has no Conv2D layer to show the feature maps of")
    if len(convolutions) > max_rows:
        picked = np.linspace(0, len(convolutions) - 1, max_rows).round().astype(int)
        convolutions = [convolutions[i] for i in picked]
    fig = _figure(figsize, dpi)
    grid = fig.add_gridspec(len(convolutions), 2, width_ratios=(1, 4))
    _show(fig.add_subplot(grid[:, 0]), image, "input")
    for row, (name, maps) in enumerate(convolutions):
        ax = fig.add_subplot(grid[row, 1])
        shown = maps[:max_channels]
        _show_mosaic(ax, shown, columns=min(len(shown), 16), cmap="viridis")
        ax.set_title(f"{name}: {len(shown)} of {maps.shape[0]} maps, "
                     f"{maps.shape[1]}x{maps.shape[2]}", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def confusion_matrix_plot(labels: np.ndarray, predicted: np.ndarray, class_names: Sequence[str],
                          path, *, figsize=(8, 7), dpi: int = DEFAULT_DPI) -> Path:
    """The confusion matrix: counts in the cells, colour = share of the true class's images."""
    names = [str(name) for name in class_names]
    counts = confusion_matrix(labels, predicted, len(names))
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = _figure(figsize, dpi)
    ax = fig.subplots()
    picture = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(picture, ax=ax, label="share of the true class")
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                color="white" if shares[i, j] > 0.5 else "black")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"Confusion matrix: {counts.sum()} images, accuracy {accuracy:.2%}")
    fig.tight_layout()
    return _save(fig, path)


def confident_mistakes(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray,
                       class_names: Sequence[str], path, *, count: int = 16, figsize=(8, 8),
                       dpi: int = DEFAULT_DPI) -> Path:
    """The `count` misclassified images with the highest predicted probability.

    images: (N, C, H, W); labels: (N,) true classes; probabilities: (N, K) of the model.
    Each tile says "predicted (probability)" over "true class".
    """
    probabilities = np.asarray(probabilities)
    if images.ndim != 4 or probabilities.shape != (len(images), len(class_names)) \
            or np.shape(labels) != (len(images),):
        raise ValueError(f"need images (N, C, H, W), labels (N,) and probabilities (N, K) for "
                         f"K = {len(class_names)} classes, got {images.shape}, "
                         f"{np.shape(labels)} and {probabilities.shape}")
    predicted = probabilities.argmax(axis=1)
    wrong = np.count_nonzero(predicted != labels)
    worst = confident_mistake_indices(labels, probabilities, count)
    fig = _figure(figsize, dpi)
    columns = max(1, math.ceil(math.sqrt(count)))
    rows = max(1, math.ceil(len(worst) / columns))
    for slot, index in enumerate(worst):
        ax = fig.add_subplot(rows, columns, slot + 1)
        guess = predicted[index]
        _show(ax, images[index], f"{class_names[guess]} ({probabilities[index, guess]:.0%})\n"
                                 f"true: {class_names[labels[index]]}")
    fig.suptitle(f"Most confident mistakes: {len(worst)} of {wrong} misclassified "
                 f"(of {len(images)})" if wrong else "No misclassified image")
    fig.tight_layout()
    return _save(fig, path)


def saliency_map(model, image: np.ndarray, path, *, target: int | None = None,
                 class_names: Sequence[str] | None = None, figsize=(9, 3.2),
                 dpi: int = DEFAULT_DPI) -> Path:
    """The image, |d score / d input| (see `saliency`) and the two overlaid."""
    gradient, target = saliency(model, image, target)
    label = class_names[target] if class_names is not None else f"class {target}"
    fig = _figure(figsize, dpi)
    left, middle, right = fig.subplots(1, 3)
    _show(left, image, "input")
    heat = middle.imshow(gradient, cmap="hot", interpolation="nearest")
    fig.colorbar(heat, ax=middle, fraction=0.046)
    _hide_ticks(middle)
    middle.set_title(f"saliency of '{label}'", fontsize=9)
    _show(right, image, "overlay")
    right.imshow(gradient, cmap="hot", alpha=0.6, interpolation="nearest")
    fig.tight_layout()
    return _save(fig, path)


def _default_field_layer(recorded: "trace.Trace") -> str:
    """The last module whose output is still an image larger than one pixel, behind a
    convolution or pool: the widest field of an image map."""
    windowed = False
    candidates = []
    for call in recorded.calls:
        if call.is_leaf and call.module.receptive_window(call.inputs[0].shape[1:]) is not None:
            windowed = True
        if windowed and call.name and call.output.ndim == 4 and call.output[0, 0].size > 1:
            candidates.append(call.name)
    if not candidates:
        raise ValueError("the model has no convolution or pool: every field is one pixel")
    return candidates[-1]


def receptive_field_plot(model, image: np.ndarray, path, *, layer: str | None = None,
                         unit: tuple[int, int] | None = None, channel: int | None = None,
                         figsize=(8, 4), dpi: int = DEFAULT_DPI) -> Path:
    """The receptive field of one unit drawn on the image, beside the unit's input gradient.

    layer: a layer name (default: the last convolution or pool); unit: (row, column) of its
    output (default: the centre); channel: the map whose unit gives the gradient (default
    None: the sum over all maps, whose support fills more of the field). The box is
    `receptive_field_box` (dashed where it reaches into the padding); the right panel shows
    |d unit / d input|, which is zero outside the box.
    """
    from matplotlib.patches import Rectangle

    shape = tuple(_check_image(image).shape)
    recorded = trace.record(model, np.zeros((1, *shape), model.dtype or np.float32))
    layer = _default_field_layer(recorded) if layer is None else layer
    out = _image_call(recorded, layer).output
    if unit is None:
        unit = (out.shape[2] // 2, out.shape[3] // 2)
    gradient = np.abs(unit_gradient(model, image, layer, unit, channel)).max(axis=0)
    top, left, height, width = receptive_field_box(model, layer, unit, shape)
    inside = top >= 0 and left >= 0 and top + height <= image.shape[1] \
        and left + width <= image.shape[2]
    fig = _figure(figsize, dpi)
    panels = fig.subplots(1, 2)
    _show(panels[0], image, f"{layer} unit {tuple(unit)}: field {height}x{width}")
    panels[1].imshow(gradient, cmap="hot", interpolation="nearest")
    _hide_ticks(panels[1])
    maps = ":" if channel is None else channel
    panels[1].set_title(f"|d {layer}[{maps}, {unit[0]}, {unit[1]}] / d input|", fontsize=8)
    for ax in panels:
        ax.add_patch(Rectangle((left - 0.5, top - 0.5), width, height, fill=False,
                               edgecolor="cyan", linewidth=2,
                               linestyle="-" if inside else "--"))
        ax.set_xlim(min(-0.5, left - 1), max(image.shape[2] - 0.5, left + width))
        ax.set_ylim(max(image.shape[1] - 0.5, top + height), min(-0.5, top - 1))
    fig.tight_layout()
    return _save(fig, path)
