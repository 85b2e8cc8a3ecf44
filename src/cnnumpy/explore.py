"""The explorer: a local web page that shows what a trained network sees (`cnnumpy explore`).

    explorer = Explorer(checkpoint.build_model, normalization, test_set, class_names, run_dir)
    serve(explorer, host="127.0.0.1", port=0)     # prints the URL, serves until Ctrl-C

The page (`explore_static/`: HTML, CSS and JavaScript modules, no build step, nothing from the
internet) asks the endpoints below; the model runs in this process with cnnumpy's own forward
and backward, through `cnnumpy.insight` (unit gradients, receptive-field boxes, saliency),
`cnnumpy.summary` and `cnnumpy.shapes`. Images travel as PNG, numbers as JSON. The server is
Flask (the `web` extra), imported only here, so the rest of cnnumpy stays NumPy-only.

An image is named by an id: `test-N` (image N of the test set) or `upload-HEX` (a picture
sent to /api/upload, or drawn on the page). A layer is named as in `model.named_modules()`.

    GET  /                                      the page; /static/<file> its files
    GET  /api/info                              model, classes, the layers shown, their fields
    GET  /api/progress                          test-set predictions done so far
    GET  /api/test-images?label=&predicted=&mistakes=1&sort=&offset=&limit=
                                                (true labels at once; predicted, mistakes
                                                and sort by confidence once predicted)
    GET  /api/test-images/<n>.png               test image n, its pixels
    POST /api/upload                            form field "image": a PNG or JPEG -> {"id"}
    GET  /api/images/<id>                       top-k probabilities
    GET  /api/images/<id>/input.png             the image as the model sees it
    GET  /api/images/<id>/maps.png              every layer's feature maps in one image: a
                                                mosaic a layer, one tile per map, at the
                                                place /api/info gives as the layer's "mosaic"
    GET  /api/images/<id>/unit?layer=&channel=&row=&column=      its receptive field
    GET  /api/images/<id>/unit.png?layer=&channel=&row=&column=  |d unit / d input|
    GET  /api/images/<id>/saliency.png?class=   |d class score / d input|
    GET  /api/summary   /api/metrics   /api/confusion

Every bad request gets a 4xx answer {"error": message}. Nothing from a request names a file:
the only files served are the page's own; the run folder is read for `metrics.jsonl` only.
The test set's predictions (for the grid and the confusion matrix) are computed once, in a
background thread with its own copy of the model, while the page shows the progress. They
give way to the page: a small batch at a time, none while a request runs the model nor until
QUIET_SECONDS after the last one, so choosing an image or a unit answers about as fast as idle.

Served on a loopback address (the default 127.0.0.1), the app answers only requests whose
Host is a loopback name (127.0.0.1, localhost or [::1], any port): a page of another site
whose name was made to point at 127.0.0.1 (DNS rebinding) gets a 400, not the model. With an
explicit other `--host`, any Host is answered: the user chose to let other machines in.
"""

from __future__ import annotations

import hashlib
import io
import re
import signal
import sys
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import insight, trace
from .data.images import decode_picture, to_model_input
from .losses import softmax
from .models.containers import Residual
from .parallel import blas_threads
from .shapes import Field, field_box, traced_fields
from .summary import format_summary, summarize
from .train import predict_proba, prepare_batch

STATIC_FOLDER = Path(__file__).parent / "explore_static"
MAX_UPLOAD_BYTES = 4 * 2**20          # bytes of one uploaded picture
MAX_UPLOAD_PIXELS = 2**24             # its declared width x height x channels (16 M values)
MAX_MAPS = 64                         # feature maps shown per layer
MAP_COLUMNS = 16                      # tiles per row of a layer's mosaic
MAP_GAP = 1                           # pixels between tiles
TOP_K = 5
KEPT_IMAGES = 16                      # the forward passes (and uploads) kept in memory
PREDICTION_BATCH = 4                  # test images per step of the background predictions
                                      # (a request may overlap one step: ~0.1 s of ResNet-20)
QUIET_SECONDS = 0.5                   # they wait this long after the last request's model run
PICTURE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")   # how PNG and JPEG files start
GAP_COLOR = (70, 110, 160)            # the mosaic's gaps: not a value of the grey maps
GAP_INDEX = 255                       # the maps' palette: grey levels 0-254, then GAP_COLOR
_GREYS = np.rint(np.arange(GAP_INDEX) * 255 / (GAP_INDEX - 1))       # 0, 1, 2, ..., 254, 255
MAPS_PALETTE = np.vstack([np.column_stack([_GREYS] * 3), [GAP_COLOR]]).astype(np.uint8)
UPLOAD_TOO_LARGE = f"the upload is larger than the limit of {MAX_UPLOAD_BYTES // 2**20} MiB"
LOOPBACK = ("127.0.0.1", "localhost", "::1")           # the addresses served without a warning
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")   # as a Host header names them


class RequestError(Exception):
    """A bad request: answered with `status` and {"error": message}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- the model's side


@dataclass(frozen=True)
class Layer:
    """A layer the page shows: a convolution, a pool or a block, with its receptive field."""

    name: str
    type: str
    depth: int                     # 1 for the model's children, 2 for theirs, ...
    shape: tuple[int, int, int]    # output (C, H, W) of one image
    field: tuple[Field, Field]     # (height, width): size, jump, start in input pixels
    top: int                       # the first row of its mosaic in `maps_atlas`

    @property
    def maps(self) -> int:
        """How many of its maps are shown: the first MAX_MAPS."""
        return min(self.shape[0], MAX_MAPS)

    @property
    def columns(self) -> int:
        """Tiles a row of its mosaic."""
        return min(self.maps, MAP_COLUMNS)

    @property
    def mosaic_size(self) -> tuple[int, int]:
        """(height, width) of its mosaic (`maps_mosaic`): tiles of (h, w), MAP_GAP between."""
        _, h, w = self.shape
        rows = -(-self.maps // self.columns)
        return rows * (h + MAP_GAP) - MAP_GAP, self.columns * (w + MAP_GAP) - MAP_GAP

    def json(self) -> dict:
        height, width = self.field
        mosaic_height, mosaic_width = self.mosaic_size
        return {"name": self.name, "type": self.type, "depth": self.depth,
                "shape": list(self.shape), "field": [height.size, width.size],
                "jump": [height.jump, width.jump], "start": [height.start, width.start],
                "maps": self.maps, "columns": self.columns, "gap": MAP_GAP,
                "mosaic": {"top": self.top, "height": mosaic_height, "width": mosaic_width}}


def shown_layers(recorded: trace.Trace) -> list[Layer]:
    """The convolutions, pools and residual blocks of a trace whose output is an image, in
    the order they start (a block before its layers), their mosaics one under the other in
    that order (`maps_atlas`). A module called more than once (a pool shared by two stages)
    is shown once, at its last call: the maps kept of an image are its last output."""
    fields = traced_fields(recorded)
    chosen: dict[int, trace.Call] = {}  # by output: the same maps are shown once
    for call in recorded.calls:
        if not call.name or call.output.ndim != 4 or fields.get(id(call.output)) is None:
            continue
        windowed = call.is_leaf and \
            call.module.receptive_window(call.inputs[0].shape[1:]) is not None
        if windowed or isinstance(call.module, Residual):
            chosen[id(call.output)] = call
    last_calls: dict[str, trace.Call] = {}  # by name, in the order of the last calls
    for call in sorted(chosen.values(), key=recorded.calls.index):
        last_calls.pop(call.name, None)
        last_calls[call.name] = call
    layers, top = [], 0
    for call in last_calls.values():
        layers.append(Layer(call.name, type(call.module).__name__, call.depth,
                            tuple(call.output.shape[1:]), fields[id(call.output)], top))
        top += layers[-1].mosaic_size[0]
    return layers


@dataclass
class View:
    """One image run through the model: what the model saw, what it made."""

    image: np.ndarray                  # (C, H, W) normalised, the model's dtype
    maps: dict[str, np.ndarray]        # shown layer -> its first MAX_MAPS maps (<= MAX_MAPS, h, w)
    probabilities: np.ndarray          # (K,)
    maps_png: bytes | None = None      # `maps_atlas` of `maps` as PNG, made at its first request


class Explorer:
    """One session of the explorer: the model, the test set, what was computed for them.

    build_model: makes the model (a checkpoint's `build_model`); called twice, once for the
    pages' requests and once for the background predictions of the test set, so the two
    never share a layer's cache. normalization: (mean, std) per channel, as training used.
    test: an ImageDataset. class_names: one per output (default "0", "1", ...).
    run_dir: the folder of `metrics.jsonl` (None: no learning curves). input_shape: (C, H, W)
    of one image (default the model's `input_shape`).
    """

    def __init__(self, build_model: Callable, normalization, test, class_names=None,
                 run_dir=None, input_shape=None):
        self.build_model = build_model
        self.model = build_model()
        self.normalization = normalization
        self.test = test
        self.input_shape = tuple(input_shape or self.model.input_shape)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.dtype = self.model.dtype or np.float32
        recorded = trace.record(self.model, np.zeros((1, *self.input_shape), self.dtype))
        outputs = recorded.calls[0].output.shape[1]
        self.class_names = list(class_names or [str(k) for k in range(outputs)])[:outputs]
        self.layers = {layer.name: layer for layer in shown_layers(recorded)}
        self.lock = threading.Lock()          # one request at a time runs self.model
        self.requests = threading.Condition()  # guards the two below, wakes the predictions
        self.serving = 0                      # requests running (or waiting to run) the model
        self.last_request = 0.0               # time.monotonic() when the last one finished
        self.views: OrderedDict[str, View] = OrderedDict()
        self.uploads: OrderedDict[str, np.ndarray] = OrderedDict()
        self.done = 0                         # test images predicted so far
        self.probabilities: np.ndarray | None = None
        self.prediction_error: str | None = None
        self._predictions = threading.Thread(target=self._predict_test_set, daemon=True,
                                             name="cnnumpy-explore-predictions")

    @contextmanager
    def running(self):
        """One request at a time runs self.model, with BLAS on one thread: for one image,
        more threads mostly wait for each other (ResNet-20's pass of one image took 3 to 10
        times as long with two threads on two busy cores). The background predictions wait
        meanwhile (`_wait_until_quiet`)."""
        with self.requests:
            self.serving += 1
        try:
            with self.lock, blas_threads(1):
                yield self.model
        finally:
            with self.requests:
                self.serving -= 1
                self.last_request = time.monotonic()
                self.requests.notify_all()

    def _wait_until_quiet(self) -> None:
        """Block until no request runs the model and the last one ended QUIET_SECONDS ago."""
        with self.requests:
            while True:
                if self.serving:
                    self.requests.wait()
                    continue
                remaining = self.last_request + QUIET_SECONDS - time.monotonic()
                if remaining <= 0:
                    return
                self.requests.wait(remaining)

    # ----------------------------------------------------------------- the test set

    def start(self) -> "Explorer":
        """Start the background predictions of the test set (once)."""
        if not self._predictions.is_alive() and self.probabilities is None:
            self._predictions.start()
        return self

    def _predict_test_set(self) -> None:
        """The test set's probabilities, a batch at a time, each when no request runs the
        model; BLAS on one thread as for the requests (OpenBLAS's extra threads, once woken,
        spin on a core for a while after each call: SimpleCNN's steps took twice as long)."""
        try:
            model, images = self.build_model(), self.test.images
            parts = []
            with blas_threads(1):
                for start in range(0, len(images), PREDICTION_BATCH):
                    self._wait_until_quiet()
                    parts.append(predict_proba(model, images[start: start + PREDICTION_BATCH],
                                               self.normalization))
                    self.done = min(start + PREDICTION_BATCH, len(images))
            self.probabilities = np.concatenate(parts)
        except Exception as err:  # shown on the page; the server goes on
            self.prediction_error = f"{type(err).__name__}: {err}"

    def progress(self) -> dict:
        """How far the background predictions of the test set are."""
        return {"done": self.done, "total": len(self.test),
                "ready": self.probabilities is not None, "error": self.prediction_error}

    def test_probabilities(self) -> np.ndarray:
        """(N, K) probabilities of the test set; 503 while they are being computed."""
        if self.probabilities is None:
            raise RequestError(503, self.prediction_error or
                               f"the test set's predictions are being computed "
                               f"({self.done} of {len(self.test)})")
        return self.probabilities

    def test_images(self, label=None, predicted=None, mistakes=False, sort="index",
                    offset=0, limit=60) -> dict:
        """The test images that match the filters: index, true and predicted class and the
        predicted class's probability, sorted by `sort` ("index", "confidence" or
        "-confidence": least or most confident first). Before the test set is predicted:
        the true classes, predicted and confidence None (the filters on predictions: 503)."""
        keep = np.ones(len(self.test), dtype=bool)
        if label is not None:
            keep &= self.test.labels == label
        if self.probabilities is None and predicted is None and not mistakes and \
                sort == "index":
            page = np.flatnonzero(keep)[offset: offset + limit]
            return {"total": int(keep.sum()), "offset": offset, "images": [
                {"index": int(i), "label": int(self.test.labels[i]), "predicted": None,
                 "confidence": None} for i in page]}
        probabilities = self.test_probabilities()
        guesses = probabilities.argmax(axis=1)
        confidence = probabilities[np.arange(len(guesses)), guesses]
        if predicted is not None:
            keep &= guesses == predicted
        if mistakes:
            keep &= guesses != self.test.labels
        matched = np.flatnonzero(keep)
        if sort != "index":
            order = confidence[matched] if sort == "confidence" else -confidence[matched]
            matched = matched[np.argsort(order, kind="stable")]
        page = matched[offset: offset + limit]
        return {"total": len(matched), "offset": offset, "images": [
            {"index": int(i), "label": int(self.test.labels[i]), "predicted": int(guesses[i]),
             "confidence": float(confidence[i])} for i in page]}

    def confusion(self) -> dict:
        """The confusion matrix of the test set (rows: true classes) and the accuracy."""
        predicted = self.test_probabilities().argmax(axis=1)
        counts = insight.confusion_matrix(self.test.labels, predicted, len(self.class_names))
        return {"classes": self.class_names, "counts": counts.tolist(),
                "accuracy": float(np.trace(counts) / max(counts.sum(), 1))}

    # ----------------------------------------------------------------- one image

    def upload(self, data: bytes, name: str) -> str:
        """Decode an uploaded PNG or JPEG into the model's input shape; its id."""
        if not data:
            raise RequestError(400, f"{name}: the file is empty")
        if len(data) > MAX_UPLOAD_BYTES:
            raise RequestError(413, UPLOAD_TOO_LARGE)
        if not any(data.startswith(magic) for magic in PICTURE_MAGIC):
            raise RequestError(415, f"{name}: not a PNG or JPEG picture")
        try:
            pixels = decode_picture(io.BytesIO(data), self.input_shape[0], name,
                                    max_pixels=MAX_UPLOAD_PIXELS)
            pixels = to_model_input(pixels, self.input_shape, name)
        except ValueError as err:
            raise RequestError(400, str(err)) from None
        image_id = "upload-" + hashlib.sha256(pixels.tobytes()).hexdigest()[:16]
        with self.lock:
            _keep(self.uploads, image_id, pixels)
        return image_id

    def pixels(self, image_id: str) -> np.ndarray:
        """(C, H, W) uint8 of an image id; 404 for an id that names no image."""
        test = re.fullmatch(r"test-(\d{1,9})", image_id)
        if test:
            index = int(test.group(1))
            if index >= len(self.test):
                raise RequestError(404, f"{image_id}: the test set has {len(self.test)} images")
            return self.test.images[index]
        if image_id in self.uploads:
            return self.uploads[image_id]
        raise RequestError(404, f"no image {image_id!r}: ids are test-N or those /api/upload "
                                f"gave (the last {KEPT_IMAGES} are kept)")

    def view(self, image_id: str) -> View:
        """The image's forward pass, recorded once and kept for the next requests."""
        with self.lock:   # a kept view needs no model (nor BLAS limits: ~1 ms a request)
            if image_id in self.views:
                self.views.move_to_end(image_id)
                return self.views[image_id]
        with self.running():
            if image_id in self.views:   # made by another request meanwhile
                return self.views[image_id]
            image = prepare_batch(self.pixels(image_id)[None], self.normalization, self.dtype)
            recorded = trace.record(self.model, image)
            # only the maps shown: a copy, so the rest of the output is freed (a unit's
            # gradient is a pass of its own; ResNet-50's outputs at 224x224 are ~64 MB)
            maps = {call.name: call.output[0, :MAX_MAPS].copy() for call in recorded.calls
                    if call.name in self.layers}
            logits = recorded.calls[0].output
            view = View(image[0], maps, softmax(logits.astype(np.float64))[0])
            _keep(self.views, image_id, view)
            return view

    def prediction(self, image_id: str) -> dict:
        """The image's predicted class and its TOP_K classes with their probabilities."""
        probabilities = self.view(image_id).probabilities
        best = np.argsort(-probabilities, kind="stable")[:TOP_K]
        return {"id": image_id, "predicted": self.class_names[best[0]], "top": [
            {"class": self.class_names[k], "index": int(k),
             "probability": float(probabilities[k])} for k in best]}

    def maps_png(self, image_id: str) -> bytes:
        """Every shown layer's maps of the image as one PNG (`maps_atlas`), kept with the view:
        asked again, it costs nothing. 404 for a model without a layer to show."""
        if not self.layers:
            raise RequestError(404, f"{type(self.model).__name__} has no convolution, pool or "
                                    f"block whose output is an image: no maps to show")
        view = self.view(image_id)
        if view.maps_png is None:
            view.maps_png = png(maps_atlas(list(self.layers.values()), view.maps), MAPS_PALETTE)
        return view.maps_png

    def layer(self, name) -> Layer:
        """The shown layer of that name; 404 for any other name."""
        if name not in self.layers:
            raise RequestError(404, f"unknown layer {name!r}; the layers shown are "
                                    f"{', '.join(self.layers)}")
        return self.layers[name]

    def unit(self, name, channel: int, row: int, column: int) -> tuple[Layer, tuple[int, int]]:
        """The layer and (row, column) of a unit; 400 when it lies outside the output."""
        layer = self.layer(name)
        maps, height, width = layer.shape
        if not (0 <= channel < maps and 0 <= row < height and 0 <= column < width):
            raise RequestError(400, f"unit (map {channel}, row {row}, column {column}) is "
                                    f"outside the output of {name!r}, of shape "
                                    f"({maps}, {height}, {width}) (maps, rows, columns)")
        return layer, (row, column)

    def field(self, name, channel: int, row: int, column: int) -> dict:
        """The unit's receptive field in input pixels, and the part of it inside the image."""
        layer, unit = self.unit(name, channel, row, column)
        # the traced fields of the model (`insight.receptive_field_box` without its pass)
        top, left, height, width = field_box(layer.field, unit)
        _, rows, columns = self.input_shape
        inside_top, inside_left = max(top, 0), max(left, 0)
        box = {"top": inside_top, "left": inside_left,
               "height": min(top + height, rows) - inside_top,
               "width": min(left + width, columns) - inside_left}
        return {"layer": name, "channel": channel, "unit": list(unit),
                "field": {"top": top, "left": left, "height": height, "width": width},
                "box": box, "clipped": box["height"] != height or box["width"] != width}

    def unit_gradient(self, image_id: str, name, channel: int, row: int, column: int):
        """|d unit / d input|, the largest over the input's channels: (H, W)."""
        _, unit = self.unit(name, channel, row, column)
        image = self.view(image_id).image
        with self.running():
            gradient = insight.unit_gradient(self.model, image, name, unit, channel)
        return np.abs(gradient).max(axis=0)

    def saliency(self, image_id: str, target: int) -> np.ndarray:
        """|d score of class `target` / d input|, the largest over the channels: (H, W)."""
        if not 0 <= target < len(self.class_names):
            raise RequestError(400, f"class must be in [0, {len(self.class_names)}), "
                                    f"got {target}")
        image = self.view(image_id).image
        with self.running():
            return insight.saliency(self.model, image, target)[0]

    # ----------------------------------------------------------------- the run

    def summary(self) -> dict:
        with self.running():
            summary = summarize(self.model, self.input_shape)
        rows = [{"name": row.name, "type": row.type, "shape": list(row.output_shape),
                 "parameters": row.parameters, "macs": row.macs, "leaf": row.leaf,
                 "field": None if row.field is None else [f.size for f in row.field],
                 "jump": None if row.field is None else [f.jump for f in row.field]}
                for row in summary.rows]
        return {"model": summary.model, "input_shape": list(summary.input_shape),
                "rows": rows, "parameters": summary.parameters, "macs": summary.macs,
                "activation_bytes": summary.activation_bytes, "text": format_summary(summary)}

    def metrics(self) -> list[dict]:
        """The run's metrics.jsonl, one dict per epoch; 404 without it, 422 when damaged."""
        if self.run_dir is None:
            raise RequestError(404, "no run folder: the learning curves need metrics.jsonl")
        try:
            return insight.read_metrics(self.run_dir)
        except FileNotFoundError as err:
            raise RequestError(404, str(err)) from None
        except ValueError as err:
            raise RequestError(422, str(err)) from None

    def info(self) -> dict:
        """The model, its input shape, the classes, the test set and the layers shown."""
        return {"model": type(self.model).__name__, "input_shape": list(self.input_shape),
                "classes": self.class_names, "dataset": self.test.name,
                "test_images": len(self.test), "drawable": self.input_shape[0] == 1,
                "layers": [layer.json() for layer in self.layers.values()]}


def _keep(kept: OrderedDict, key: str, value) -> None:
    """Put `value` last in `kept`, dropping the oldest entries beyond KEPT_IMAGES."""
    kept[key] = value
    kept.move_to_end(key)
    while len(kept) > KEPT_IMAGES:
        kept.popitem(last=False)


# --------------------------------------------------------------------------- PNG


def png(pixels: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    """(H, W, 3) RGB or (H, W) grey uint8 as PNG bytes, by Pillow at its fastest compression
    level; with a (256, 3) `palette`, the (H, W) values are indices into it (a palette PNG).

    The maps are sent so: ResNet-20's maps.png (1007x527) took Pillow 40-80 ms as RGB, most
    of it spent choosing a filter for each row, which it does not try for palette images,
    and 10-20 ms with the palette (a third of the bytes)."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(pixels))
    if palette is not None:
        image.putpalette(palette.tobytes())  # the grey image of indices becomes mode "P"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def picture(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W) or (H, W, 3) uint8: pixels as they are, floats rescaled."""
    shown = image if image.dtype == np.uint8 else np.rint(insight.rescale(image) * 255).astype(
        np.uint8)
    return shown[0] if shown.shape[0] == 1 else shown.transpose(1, 2, 0)


def heat(values: np.ndarray) -> np.ndarray:
    """(H, W) >= 0 -> (H, W, 3) uint8, black through red and yellow to white (as "hot")."""
    v = insight.rescale(values) if values.max() > 0 else np.zeros(values.shape)
    return np.rint(np.clip(np.stack([3 * v, 3 * v - 1, 3 * v - 2], axis=-1), 0, 1) * 255) \
        .astype(np.uint8)


def maps_indices(maps: np.ndarray) -> np.ndarray:
    """A layer's output (C, h, w) as one image of MAPS_PALETTE indices: its first MAX_MAPS
    maps, MAP_COLUMNS a row, each rescaled on its own (`insight.mosaic`) to the grey levels
    0-254, the gaps GAP_INDEX."""
    shown = maps[:MAX_MAPS]
    grid = insight.mosaic(shown, min(len(shown), MAP_COLUMNS), gap=MAP_GAP)  # NaN in the gaps
    indices = np.rint(np.nan_to_num(grid) * (GAP_INDEX - 1)).astype(np.uint8)
    indices[np.isnan(grid)] = GAP_INDEX
    return indices


def maps_mosaic(maps: np.ndarray) -> np.ndarray:
    """`maps_indices` in colour, as the page shows them: (H, W, 3) uint8."""
    return MAPS_PALETTE[maps_indices(maps)]


def maps_atlas(layers: list[Layer], maps: dict[str, np.ndarray]) -> np.ndarray:
    """Every layer's mosaic (`maps_indices` of `maps[layer.name]`) in one image of
    MAPS_PALETTE indices, one under the other, each at the left from row `layer.top`; the
    rest, right of the narrower ones, GAP_INDEX. One image for the page to fetch and decode
    instead of one a layer (31 for ResNet-20): (sum of the heights, largest width) uint8."""
    atlas = np.full((max(layer.top + layer.mosaic_size[0] for layer in layers),
                     max(layer.mosaic_size[1] for layer in layers)), GAP_INDEX, dtype=np.uint8)
    for layer in layers:
        height, width = layer.mosaic_size
        atlas[layer.top: layer.top + height, :width] = maps_indices(maps[layer.name])
    return atlas


# --------------------------------------------------------------------------- the app


def _integer(args, name: str, default=None, low: int = 0, high: int = 2**31) -> int:
    """Query argument `name` as an integer in [low, high]; 400 otherwise."""
    text = args.get(name)
    if text is None or text == "":
        if default is None:
            raise RequestError(400, f"missing the argument {name}")
        return default
    if not re.fullmatch(r"-?\d{1,10}", text) or not low <= int(text) <= high:
        raise RequestError(400, f"{name} must be an integer in [{low}, {high}], got {text!r}")
    return int(text)


def _optional(args, name: str, high: int) -> int | None:
    """Query argument `name` as an integer in [0, high], or None when it is not given."""
    return None if args.get(name) in (None, "") else _integer(args, name, high=high)


def create_app(explorer: Explorer, hosts=LOOPBACK_NAMES):
    """The Flask app of an explorer (see the module docstring for its endpoints). It answers
    only requests whose Host header names one of `hosts` (any port; None: any Host)."""
    try:
        from flask import Flask, Response, jsonify, request
        from werkzeug.exceptions import HTTPException
    except ImportError:
        raise ImportError('the explorer needs Flask: pip install -e ".[web]" (or pip install '
                          '"cnnumpy[web]")') from None

    app = Flask(__name__, static_folder=str(STATIC_FOLDER), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES + 64 * 1024  # the form's own bytes
    app.json.sort_keys = False

    def png_response(data: bytes):
        return Response(data, mimetype="image/png", headers={"Cache-Control": "no-store"})

    def unit_arguments():
        args = request.args
        return (args.get("layer", ""), _integer(args, "channel"), _integer(args, "row"),
                _integer(args, "column"))

    @app.errorhandler(RequestError)
    def request_error(err: RequestError):
        return jsonify(error=str(err)), err.status

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        return jsonify(error=UPLOAD_TOO_LARGE if err.code == 413 else err.description), \
            err.code

    @app.before_request
    def check_host():
        # DNS rebinding: another site's name resolved to this machine; its pages would send
        # their own name as the Host
        name = re.sub(r":\d*$", "", request.host.lower())
        if hosts is not None and name not in hosts:
            raise RequestError(400, f"Host {request.host!r} is not this explorer's: it "
                                    f"answers {', '.join(hosts)} (with the port)")

    @app.after_request
    def headers(response):
        # the page runs only its own scripts and loads nothing from elsewhere
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.get("/")
    def index():
        return app.send_static_file("index.html")

    # the endpoints without arguments: one method's answer as JSON
    for name in ("info", "progress", "summary", "metrics", "confusion"):
        method = getattr(explorer, name)
        app.add_url_rule(f"/api/{name}", name, lambda method=method: jsonify(method()))

    @app.get("/api/test-images")
    def test_images():
        args, classes = request.args, len(explorer.class_names) - 1
        sort = args.get("sort", "index")
        if sort not in ("index", "confidence", "-confidence"):
            raise RequestError(400, f"sort must be index, confidence or -confidence, "
                                    f"got {sort!r}")
        return jsonify(explorer.test_images(
            _optional(args, "label", classes), _optional(args, "predicted", classes),
            args.get("mistakes") in ("1", "true"), sort, _integer(args, "offset", 0),
            _integer(args, "limit", 60, low=1, high=500)))

    @app.get("/api/test-images/<int:index>.png")
    def test_image(index: int):
        return png_response(png(picture(explorer.pixels(f"test-{index}"))))

    @app.post("/api/upload")
    def upload():
        file = request.files.get("image")
        if file is None:
            raise RequestError(400, "send the picture as the form field 'image' "
                                    "(a PNG or JPEG file)")
        name = Path(file.filename or "the upload").name[:100]
        return jsonify(id=explorer.upload(file.read(MAX_UPLOAD_BYTES + 1), name))

    @app.get("/api/images/<image_id>")
    def prediction(image_id: str):
        return jsonify(explorer.prediction(image_id))

    @app.get("/api/images/<image_id>/input.png")
    def model_view(image_id: str):
        return png_response(png(picture(explorer.view(image_id).image)))

    @app.get("/api/images/<image_id>/maps.png")
    def feature_maps(image_id: str):
        return png_response(explorer.maps_png(image_id))

    @app.get("/api/images/<image_id>/unit")
    def unit_field(image_id: str):
        explorer.pixels(image_id)
        return jsonify(explorer.field(*unit_arguments()))

    @app.get("/api/images/<image_id>/unit.png")
    def unit_gradient(image_id: str):
        return png_response(png(heat(explorer.unit_gradient(image_id, *unit_arguments()))))

    @app.get("/api/images/<image_id>/saliency.png")
    def saliency(image_id: str):
        target = _optional(request.args, "class", 2**31)
        if target is None:
            target = int(explorer.view(image_id).probabilities.argmax())
        return png_response(png(heat(explorer.saliency(image_id, target))))

    return app


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt


def serve(explorer: Explorer, host: str = "127.0.0.1", port: int = 0) -> int:
    """Serve the explorer at http://host:port/ until Ctrl-C (port 0: a free one); prints
    the URL, and a warning when `host` lets other machines in. On a loopback address only
    loopback names are answered as Host; on another, any (the user chose it)."""
    from werkzeug.serving import make_server

    app = create_app(explorer, LOOPBACK_NAMES if host in LOOPBACK else None)
    server = make_server(host, port, app, threaded=True)
    shown = f"[{host}]" if ":" in host else host
    if host not in LOOPBACK:
        print(f"warning: --host {host}: the explorer is reachable from other machines, "
              f"without a password; anyone who can reach {shown}:{server.server_port} sees "
              f"the model and the test images", file=sys.stderr, flush=True)
    explorer.start()
    print(f"cnnumpy explore: http://{shown}:{server.server_port}/  (Ctrl-C stops it)",
          flush=True)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)  # `kill`: as Ctrl-C
    try:
        server.serve_forever()  # werkzeug's returns on Ctrl-C
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
    print("cnnumpy explore: stopped", flush=True)
    return 0
