"""The explorer's endpoints through Flask's test client, on a checkpoint of `cnnumpy train`
(the `explore_run` fixture) and on a ResNet-20 with its branches; every answer is checked
against cnnumpy's own functions (predict_proba, trace, shapes, insight, summary)."""

import http.client
import io
import json
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest

pytest.importorskip("flask", reason="the explorer needs Flask (the extra web)")
from PIL import Image  # noqa: E402

import cnnumpy as cn  # noqa: E402
from cnnumpy import explore, insight, trace  # noqa: E402
from cnnumpy.cli import build_parser, explorer_for  # noqa: E402
from cnnumpy.data import load_dataset, normalize  # noqa: E402
from cnnumpy.shapes import traced_fields  # noqa: E402
from cnnumpy.summary import summary_table  # noqa: E402
from cnnumpy.train import predict_proba  # noqa: E402


def ready(explorer):
    """Wait for the background predictions of the test set (40 images: well under a second)."""
    explorer.start()
    deadline = time.monotonic() + 60
    while explorer.probabilities is None and explorer.prediction_error is None:
        assert time.monotonic() < deadline, "the test set's predictions did not finish"
        time.sleep(0.02)
    assert explorer.prediction_error is None
    return explorer


@pytest.fixture(scope="module")
def session(explore_run):
    """(explorer, test client, checkpoint) as `cnnumpy explore run/best.npz` makes them."""
    args = build_parser().parse_args(["explore", str(explore_run / "run" / "best.npz"),
                                      "--data-dir", str(explore_run / "data")])
    explorer = ready(explorer_for(args))
    return explorer, explore.create_app(explorer).test_client(), \
        cn.load_checkpoint(explore_run / "run" / "best.npz")


def png_pixels(response) -> np.ndarray:
    assert response.status_code == 200, response.data
    assert response.mimetype == "image/png"
    with Image.open(io.BytesIO(response.data)) as image:  # a palette's colours (maps.png)
        return np.asarray(image.convert("RGB") if image.mode == "P" else image)


def mosaics(client, image_id: str) -> dict[str, np.ndarray]:
    """Each layer's part of the image's maps.png, at the place /api/info gives."""
    atlas = png_pixels(client.get(f"/api/images/{image_id}/maps.png"))
    layers = client.get("/api/info").json["layers"]
    last = layers[-1]["mosaic"]
    assert atlas.shape == (last["top"] + last["height"],
                           max(layer["mosaic"]["width"] for layer in layers), 3)
    parts = {}
    for layer in layers:
        top, height, width = (layer["mosaic"][key] for key in ("top", "height", "width"))
        parts[layer["name"]] = atlas[top: top + height, :width]
        assert (atlas[top: top + height, width:] == explore.GAP_COLOR).all()  # the rest
    return parts


def test_info_names_the_layers_with_their_fields(session):
    explorer, client, checkpoint = session
    info = client.get("/api/info").json
    assert info["model"] == "SimpleCNN" and info["input_shape"] == [1, 28, 28]
    assert info["classes"] == checkpoint.metadata["class_names"] and info["test_images"] == 40
    assert info["drawable"] is True
    assert [layer["name"] for layer in info["layers"]] == ["conv1", "pool1", "conv2", "pool2"]
    expected = cn.receptive_fields(explorer.model, axis=0)  # conv1, pool1, conv2, pool2
    for layer, field in zip(info["layers"], expected):
        assert layer["field"] == [field.size] * 2 and layer["jump"] == [field.jump] * 2
        assert layer["start"] == [field.start] * 2
    assert info["layers"][2]["shape"] == [64, 14, 14]
    assert info["layers"][2]["maps"] == 64 and info["layers"][2]["columns"] == 16
    # the mosaics one under the other in maps.png: 16 tiles a row, a pixel between them
    assert [layer["mosaic"] for layer in info["layers"]] == [
        {"top": 0, "height": 2 * 29 - 1, "width": 16 * 29 - 1},     # conv1: 32 maps of 28x28
        {"top": 57, "height": 2 * 15 - 1, "width": 16 * 15 - 1},    # pool1: 32 of 14x14
        {"top": 86, "height": 4 * 15 - 1, "width": 16 * 15 - 1},    # conv2: 64 of 14x14
        {"top": 145, "height": 4 * 8 - 1, "width": 16 * 8 - 1}]     # pool2: 64 of 7x7


def test_the_grid_filters_and_sorts_the_test_predictions(session, explore_run):
    explorer, client, checkpoint = session
    test = load_dataset("fashion-mnist", "test", data_dir=explore_run / "data")
    probabilities = predict_proba(checkpoint.build_model(), test.images,
                                  (checkpoint.arrays["normalization/mean"],
                                   checkpoint.arrays["normalization/std"]))
    predicted = probabilities.argmax(axis=1)
    assert client.get("/api/progress").json == {"done": 40, "total": 40, "ready": True,
                                                "error": None}
    everything = client.get("/api/test-images?limit=500").json
    assert everything["total"] == 40
    assert [image["index"] for image in everything["images"]] == list(range(40))
    assert [image["predicted"] for image in everything["images"]] == predicted.tolist()
    assert [image["label"] for image in everything["images"]] == test.labels.tolist()
    np.testing.assert_allclose([image["confidence"] for image in everything["images"]],
                               probabilities.max(axis=1), rtol=1e-6)

    label = int(test.labels[0])
    shown = client.get(f"/api/test-images?label={label}").json
    assert shown["total"] == np.count_nonzero(test.labels == label)
    assert {image["label"] for image in shown["images"]} == {label}
    wrong = client.get("/api/test-images?mistakes=1&sort=-confidence").json
    assert wrong["total"] == np.count_nonzero(predicted != test.labels)
    confidences = [image["confidence"] for image in wrong["images"]]
    assert confidences == sorted(confidences, reverse=True)
    assert all(image["label"] != image["predicted"] for image in wrong["images"])
    page = client.get("/api/test-images?offset=30&limit=5&sort=confidence").json
    ordered = np.argsort(probabilities.max(axis=1), kind="stable")
    assert [image["index"] for image in page["images"]] == ordered[30:35].tolist()

    thumbnail = png_pixels(client.get("/api/test-images/7.png"))
    np.testing.assert_array_equal(thumbnail, test.images[7, 0])


def test_confusion_cells_count_the_images_they_open(session):
    explorer, client, _ = session
    answer = client.get("/api/confusion").json
    counts = np.array(answer["counts"])
    assert counts.shape == (10, 10) and counts.sum() == 40
    everything = client.get("/api/test-images?limit=500").json["images"]
    for label, predicted in [(0, 3), (9, 9), (int(everything[0]["label"]),
                                             int(everything[0]["predicted"]))]:
        cell = client.get(f"/api/test-images?label={label}&predicted={predicted}").json
        assert cell["total"] == counts[label, predicted]
        assert cell["total"] == sum(image["label"] == label and image["predicted"] == predicted
                                    for image in everything)
    assert answer["accuracy"] == pytest.approx(np.trace(counts) / 40)


def test_an_image_its_prediction_view_and_feature_maps(session, explore_run):
    explorer, client, checkpoint = session
    test = load_dataset("fashion-mnist", "test", data_dir=explore_run / "data")
    normalization = (checkpoint.arrays["normalization/mean"],
                     checkpoint.arrays["normalization/std"])
    expected = predict_proba(checkpoint.build_model(), test.images[5:6], normalization)[0]
    answer = client.get("/api/images/test-5").json
    best = np.argsort(-expected, kind="stable")[:5]
    assert [entry["index"] for entry in answer["top"]] == best.tolist()
    assert answer["predicted"] == checkpoint.metadata["class_names"][best[0]]
    np.testing.assert_allclose([entry["probability"] for entry in answer["top"]],
                               expected[best], rtol=1e-5)

    image = normalize(test.images[5:6], *normalization)
    view = png_pixels(client.get("/api/images/test-5/input.png"))
    np.testing.assert_allclose(view / 255, insight.rescale(image[0, 0]), atol=0.5 / 255 + 1e-9)

    recorded = trace.record(checkpoint.build_model(), image.astype(np.float32))
    parts = mosaics(client, "test-5")
    assert list(parts) == ["conv1", "pool1", "conv2", "pool2"]
    for name, part in parts.items():
        np.testing.assert_array_equal(part, explore.maps_mosaic(recorded.call(name).output[0]))
    out = recorded.call("conv2").output[0]                  # (64, 14, 14)
    mosaic = parts["conv2"]
    assert mosaic.shape == (4 * 15 - 1, 16 * 15 - 1, 3)
    row, column = divmod(19, 16)                            # map 19: row 1, column 3 of tiles
    tile = mosaic[row * 15: row * 15 + 14, column * 15: column * 15 + 14, 0]
    # 255 grey levels (0-254 of the palette, shown as 0-255): two roundings of half a level
    np.testing.assert_allclose(tile / 255, insight.rescale(out[19]), atol=1 / 254 + 1e-6)
    assert tile.min() == 0 and tile.max() == 255   # each map rescaled to the whole range
    assert (mosaic[14, :, :] == explore.GAP_COLOR).all()    # the gap under the first row


def test_the_maps_are_made_once_an_image(session, monkeypatch):
    """maps.png is drawn at its first request and kept with the image's view: asked again,
    the same bytes without drawing anything."""
    explorer, client, _ = session
    drawn, atlas = [], explore.maps_atlas

    def counted(layers, maps):
        drawn.append(len(layers))
        return atlas(layers, maps)

    monkeypatch.setattr(explore, "maps_atlas", counted)
    first = client.get("/api/images/test-11/maps.png")
    again = client.get("/api/images/test-11/maps.png")
    assert first.status_code == again.status_code == 200
    assert first.data == again.data and drawn == [4]
    assert client.get("/api/images/test-12/maps.png").data != first.data and drawn == [4, 4]


def test_an_onnx_file_is_explored_as_its_checkpoint(session, explore_run, tmp_path):
    """`cnnumpy export` of the checkpoint, explored: the same layers and the same prediction
    (the imported model's layers are named by kind and count, as SimpleCNN's are)."""
    pytest.importorskip("onnx", reason="ONNX files need the extra onnx")
    from cnnumpy.cli import main
    onnx_file = tmp_path / "model.onnx"
    assert main(["export", str(explore_run / "run" / "best.npz"), "--onnx", str(onnx_file)]) == 0
    args = build_parser().parse_args(["explore", str(onnx_file), "--data-dir",
                                      str(explore_run / "data")])
    client = explore.create_app(ready(explorer_for(args))).test_client()
    _, npz_client, _ = session
    ours, theirs = client.get("/api/info").json, npz_client.get("/api/info").json
    assert [layer["shape"] for layer in ours["layers"]] == \
        [layer["shape"] for layer in theirs["layers"]]
    assert ours["classes"] == theirs["classes"]
    answer = client.get("/api/images/test-5").json
    expected = npz_client.get("/api/images/test-5").json
    assert answer["predicted"] == expected["predicted"]
    np.testing.assert_allclose([entry["probability"] for entry in answer["top"]],
                               [entry["probability"] for entry in expected["top"]], rtol=1e-5)


def test_a_unit_its_field_and_its_input_gradient(session):
    explorer, client, _ = session
    answer = client.get("/api/images/test-2/unit?layer=conv2&channel=3&row=2&column=4").json
    top, left, height, width = insight.receptive_field_box(explorer.model, "conv2", (2, 4))
    assert answer["field"] == {"top": top, "left": left, "height": height, "width": width}
    assert answer["field"] == {"top": 1, "left": 5, "height": 8, "width": 8}
    assert answer["box"] == answer["field"] and answer["clipped"] is False
    corner = client.get("/api/images/test-2/unit?layer=conv2&channel=0&row=0&column=0").json
    assert corner["field"] == {"top": -3, "left": -3, "height": 8, "width": 8}
    assert corner["box"] == {"top": 0, "left": 0, "height": 5, "width": 5}
    assert corner["clipped"] is True

    heat = png_pixels(client.get("/api/images/test-2/unit.png?layer=conv2&channel=3&row=2"
                                 "&column=4"))
    gradient = insight.unit_gradient(explorer.model, explorer.view("test-2").image, "conv2",
                                   (2, 4), channel=3)
    np.testing.assert_array_equal(heat, explore.heat(np.abs(gradient[0])))
    assert heat.std() > 0 and not heat[~_inside(1, 5, 8, 8)].any()   # black outside the field


def _inside(top, left, height, width, shape=(28, 28)):
    mask = np.zeros(shape, dtype=bool)
    mask[max(top, 0): top + height, max(left, 0): left + width] = True
    return mask


def test_saliency_of_any_class(session):
    explorer, client, _ = session
    for target in (0, 7):
        heat = png_pixels(client.get(f"/api/images/test-1/saliency.png?class={target}"))
        gradient, _ = insight.saliency(explorer.model, explorer.view("test-1").image, target)
        np.testing.assert_array_equal(heat, explore.heat(gradient))
        assert heat.std() > 0
    default = png_pixels(client.get("/api/images/test-1/saliency.png"))
    predicted = client.get("/api/images/test-1").json["top"][0]["index"]
    np.testing.assert_array_equal(
        default, png_pixels(client.get(f"/api/images/test-1/saliency.png?class={predicted}")))


def test_summary_and_learning_curves(session, explore_run):
    explorer, client, _ = session
    summary = client.get("/api/summary").json
    assert summary["text"] == summary_table(explorer.model, (1, 28, 28))
    assert [row["name"] for row in summary["rows"]][:3] == ["conv1", "relu1", "pool1"]
    assert summary["rows"][3]["field"] == [8, 8] and summary["rows"][3]["jump"] == [2, 2]
    metrics = client.get("/api/metrics").json
    logged = (explore_run / "run" / "metrics.jsonl").read_text().splitlines()
    assert metrics == [json.loads(line) for line in logged] and metrics[0]["epoch"] == 1


def picture_bytes(array: np.ndarray, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format)
    return buffer.getvalue()


def upload(client, data: bytes, name: str = "picture.png"):
    return client.post("/api/upload", data={"image": (io.BytesIO(data), name)},
                       content_type="multipart/form-data")


def test_uploads_and_drawings_are_predicted_as_cnnumpy_predict_does(session, tmp_path):
    explorer, client, checkpoint = session
    rng = np.random.default_rng(3)
    for array, format in [(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8), "PNG"),
                          (rng.integers(0, 255, (28, 28), dtype=np.uint8), "JPEG"),
                          (np.zeros((280, 280), dtype=np.uint8), "PNG")]:   # a blank drawing
        data = picture_bytes(array, format)
        path = tmp_path / f"upload.{format.lower()}"
        path.write_bytes(data)
        answer = upload(client, data, path.name)
        assert answer.status_code == 200, answer.json
        image_id = answer.json["id"]
        assert upload(client, data, "again.png").json["id"] == image_id  # by content
        _, pixels = cn.data.images.load_images([path], (1, 28, 28))
        expected = predict_proba(checkpoint.build_model(), pixels,
                                 (checkpoint.arrays["normalization/mean"],
                                  checkpoint.arrays["normalization/std"]))[0]
        top = client.get(f"/api/images/{image_id}").json["top"]
        assert top[0]["index"] == int(expected.argmax())
        np.testing.assert_allclose(top[0]["probability"], expected.max(), rtol=1e-5)
        mosaic = mosaics(client, image_id)["pool1"]
        assert mosaic.shape == (2 * 15 - 1, 16 * 15 - 1, 3)
        np.testing.assert_array_equal(mosaic, explore.maps_mosaic(
            explorer.view(image_id).maps["pool1"]))


def test_the_resnet_blocks_of_a_branched_model(explore_run):
    test = load_dataset("fashion-mnist", "test", data_dir=explore_run / "data")

    def resnet20():
        return cn.models.resnet20(input_shape=(1, 28, 28), num_classes=10,
                                  rng=np.random.default_rng(0))

    explorer = ready(explore.Explorer(resnet20, (np.float32([0.3]), np.float32([0.3])), test))
    client = explore.create_app(explorer).test_client()
    layers = {layer["name"]: layer for layer in client.get("/api/info").json["layers"]}
    assert {"layer1.0", "layer2.0", "layer3.2", "layer2.0.conv1", "layer2.0.downsample.0",
            "conv1", "avgpool"} <= set(layers)
    assert "layer1" not in layers and "layer2.0.bn1" not in layers
    assert layers["layer2.0"]["type"] == "Residual" and layers["layer2.0"]["shape"] == [32, 14, 14]
    model = resnet20()
    recorded = trace.record(model, np.zeros((1, 1, 28, 28), np.float32))
    height, width = traced_fields(recorded)[id(recorded.call("layer2.0").output)]
    assert layers["layer2.0"]["field"] == [height.size, width.size]
    maps = explorer.view("test-0").maps["layer2.0"]   # a unit the block's ReLU lets through:
    channel, row, column = np.unravel_index(maps[:, 3:, 3:].argmax(), maps[:, 3:, 3:].shape)
    unit = f"layer=layer2.0&channel={channel}&row={row + 3}&column={column + 3}"
    answer = client.get(f"/api/images/test-0/unit?{unit}").json
    top, left, size, _ = insight.receptive_field_box(model, "layer2.0", (row + 3, column + 3))
    assert answer["field"] == {"top": top, "left": left, "height": size, "width": size}
    heat = png_pixels(client.get(f"/api/images/test-0/unit.png?{unit}"))
    assert heat[..., 0].any() and not heat[~_inside(top, left, size, size)].any()
    parts = mosaics(client, "test-0")
    assert list(parts) == list(layers)
    for name, part in parts.items():
        np.testing.assert_array_equal(part, explore.maps_mosaic(explorer.view("test-0").maps[name]))
    assert parts["layer3.2"].shape == (4 * 8 - 1, 16 * 8 - 1, 3) and parts["layer3.2"].std() > 0


def test_a_view_keeps_only_the_maps_shown(explore_run):
    """A layer of 100 maps: the kept view holds its first MAX_MAPS (64) as copies, not the
    whole output; a unit of map 80 still has its gradient, from a pass of its own."""
    test = load_dataset("fashion-mnist", "test", data_dir=explore_run / "data")

    def wide():
        rng = np.random.default_rng(0)
        model = cn.Sequential({"conv": cn.layers.Conv2D(1, 100, 3, padding=1, rng=rng),
                               "relu": cn.layers.ReLU(), "pool": cn.layers.MaxPool2D(2),
                               "flatten": cn.layers.Flatten(),
                               "fc": cn.layers.Linear(100 * 14 * 14, 10, rng=rng)})
        model.input_shape = (1, 28, 28)
        return model

    explorer = explore.Explorer(wide, (np.float32([0.3]), np.float32([0.3])), test)
    client = explore.create_app(explorer).test_client()
    assert client.get("/api/images/test-4").status_code == 200
    maps = explorer.views["test-4"].maps
    assert {name: array.shape for name, array in maps.items()} == {
        "conv": (64, 28, 28), "pool": (64, 14, 14)}
    assert all(array.base is None for array in maps.values())   # nothing holds all 100 maps
    assert sum(array.nbytes for array in maps.values()) == 64 * (28 * 28 + 14 * 14) * 4
    out = trace.record(wide(), normalize(test.images[4:5], [0.3], [0.3]).astype(np.float32))
    np.testing.assert_array_equal(maps["pool"], out.call("pool").output[0, :64])
    heat = png_pixels(client.get("/api/images/test-4/unit.png?layer=conv&channel=80&row=9"
                                 "&column=9"))
    gradient = insight.unit_gradient(wide(), explorer.view("test-4").image, "conv", (9, 9), 80)
    np.testing.assert_array_equal(heat, explore.heat(np.abs(gradient).max(axis=0)))
    assert heat.std() > 0 and not heat[~_inside(8, 8, 3, 3)].any()


def test_a_module_called_twice_is_shown_once_at_its_last_call(explore_run):
    """One pooling layer used after both convolutions: one place in maps.png, with the maps
    of its second call (those an image's view keeps)."""
    test = load_dataset("fashion-mnist", "test", data_dir=explore_run / "data")

    def shared_pool():
        rng, pool = np.random.default_rng(0), cn.layers.MaxPool2D(2)
        model = cn.Sequential({"conv1": cn.layers.Conv2D(1, 4, 3, padding=1, rng=rng),
                               "pool": pool,
                               "conv2": cn.layers.Conv2D(4, 6, 3, padding=1, rng=rng),
                               "pool_again": pool, "flatten": cn.layers.Flatten(),
                               "fc": cn.layers.Linear(6 * 7 * 7, 10, rng=rng)})
        model.input_shape = (1, 28, 28)
        return model

    explorer = explore.Explorer(shared_pool, (np.float32([0.3]), np.float32([0.3])), test)
    client = explore.create_app(explorer).test_client()
    layers = client.get("/api/info").json["layers"]
    names = [layer["name"] for layer in layers]
    assert len(names) == len(set(names)) == 3 and names[:2] == ["conv1", "conv2"]
    pool = layers[2]
    assert pool["shape"] == [6, 7, 7] and pool["mosaic"]["top"] == sum(
        layer["mosaic"]["height"] for layer in layers[:2])
    parts = mosaics(client, "test-4")
    for name, part in parts.items():
        np.testing.assert_array_equal(part, explore.maps_mosaic(explorer.view("test-4").maps[name]))
    out = trace.record(shared_pool(), normalize(test.images[4:5], [0.3], [0.3]).astype(np.float32))
    np.testing.assert_array_equal(explorer.view("test-4").maps[pool["name"]],
                                  [call for call in out.calls if call.name == pool["name"]][-1]
                                  .output[0])


def test_a_model_without_maps_to_show_says_so(explore_run):
    """A perceptron: no layer's output is an image; its prediction is answered, maps.png is a
    404 that says why."""
    test = load_dataset("fashion-mnist", "test", data_dir=explore_run / "data")

    def perceptron():
        model = cn.Sequential({"flatten": cn.layers.Flatten(),
                               "fc": cn.layers.Linear(28 * 28, 10, rng=np.random.default_rng(0))})
        model.input_shape = (1, 28, 28)
        return model

    client = explore.create_app(explore.Explorer(
        perceptron, (np.float32([0.3]), np.float32([0.3])), test)).test_client()
    assert client.get("/api/info").json["layers"] == []
    assert client.get("/api/images/test-4").status_code == 200
    answer = client.get("/api/images/test-4/maps.png")
    assert answer.status_code == 404
    assert answer.json["error"] == "Sequential has no convolution, pool or block whose " \
                                   "output is an image: no maps to show"


def big_png(width: int, height: int) -> bytes:
    """A PNG that declares width x height grey pixels in few bytes (all zeros compress)."""
    return picture_bytes(np.zeros((height, width), dtype=np.uint8))


def declared_png(width: int, height: int) -> bytes:
    """A PNG of 67 bytes whose header declares width x height grey pixels: Pillow's
    decompression-bomb check refuses it when it opens it, before decoding anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + \
            zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + \
        chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


BAD_REQUESTS = [
    ("/api/images/test-1/unit?layer=fc1&channel=0&row=0&column=0", 404, "unknown layer 'fc1'"),
    ("/api/images/test-40/maps.png", 404, "the test set has 40 images"),
    ("/api/images/upload-0123456789abcdef/maps.png", 404, "no image 'upload-0123456789abcdef'"),
    ("/api/images/nope/maps.png", 404, "no image 'nope'"),
    ("/api/images/test-1/unit?layer=conv2&channel=0&row=14&column=0", 400,
     "outside the output of 'conv2', of shape (64, 14, 14)"),
    ("/api/images/test-1/unit.png?layer=conv2&channel=64&row=0&column=0", 400, "outside"),
    ("/api/images/test-1/unit?layer=conv2&channel=0&row=-1&column=0", 400, "must be an integer"),
    ("/api/images/test-1/unit?layer=conv2&channel=0&row=x&column=0", 400, "got 'x'"),
    ("/api/images/test-1/unit?layer=conv2&channel=0&row=0", 400, "missing the argument column"),
    ("/api/images/test-40", 404, "the test set has 40 images"),
    ("/api/images/upload-0123456789abcdef", 404, "no image 'upload-0123456789abcdef'"),
    ("/api/images/..%2f..%2fbest.npz", 404, ""),
    ("/api/test-images/40.png", 404, "the test set has 40 images"),
    ("/api/test-images?sort=random", 400, "sort must be"),
    ("/api/test-images?limit=0", 400, "limit must be an integer in [1, 500]"),
    ("/api/test-images?label=10", 400, "label must be an integer in [0, 9]"),
    ("/api/images/test-1/saliency.png?class=10", 400, "class must be in [0, 10)"),
    ("/static/../explore.py", 404, ""),
    ("/static/..%2fexplore.py", 404, ""),
    ("/static/%2e%2e/explore.py", 404, ""),
    ("/static/..%2f..%2fcnnumpy%2fexplore.py", 404, ""),
    ("/static/..\\explore.py", 404, ""),
    ("/static//etc/passwd", 404, ""),
    ("/../run/best.npz", 404, ""),
    ("/api/../../metrics.jsonl", 404, ""),
    ("/metrics.jsonl", 404, ""),
]


@pytest.mark.parametrize("path, status, message", BAD_REQUESTS)
def test_bad_requests_get_a_clear_4xx_and_the_server_goes_on(session, path, status, message):
    _, client, _ = session
    answer = client.get(path, follow_redirects=True)   # "//" is redirected to "/"
    assert answer.status_code == status
    assert answer.mimetype == "application/json" and message in answer.json["error"]
    assert b"import" not in answer.data and b"root:" not in answer.data
    assert client.get("/api/images/test-1").status_code == 200


@pytest.mark.parametrize("data, name, status, message", [
    (b"GIF89a not a picture we take", "a.gif", 415, "a.gif: not a PNG or JPEG picture"),
    (b"#!/bin/sh\nrm -rf /\n", "run.sh", 415, "not a PNG or JPEG"),
    (b"", "empty.png", 400, "empty.png: the file is empty"),
    (big_png(1, 1)[:30], "cut.png", 400, "cut.png: not a picture cnnumpy can read"),
    (big_png(5000, 4000), "huge.png", 400, "declares 5000x4000 pixels, more than the 16777216"),
    (declared_png(20000, 20000), "bomb.png", 400,   # Pillow's limit, before the explorer's
     "bomb.png: not a picture cnnumpy can read (Image size (400000000 pixels) exceeds limit"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * (explore.MAX_UPLOAD_BYTES + 10), "big.png", 413,
     "larger than the limit of 4 MiB"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * (2 * explore.MAX_UPLOAD_BYTES), "bigger.png", 413,
     "larger than the limit of 4 MiB"),
])
def test_bad_uploads_are_refused_clearly(session, data, name, status, message):
    _, client, _ = session
    answer = upload(client, data, name)
    assert answer.status_code == status and message in answer.json["error"]
    assert client.get("/api/info").status_code == 200


def test_upload_needs_its_form_field_and_post(session):
    _, client, _ = session
    answer = client.post("/api/upload", data={"file": (io.BytesIO(b"x"), "a.png")},
                         content_type="multipart/form-data")
    assert answer.status_code == 400 and "form field 'image'" in answer.json["error"]
    assert client.get("/api/upload").status_code == 405


def test_the_test_set_is_predicted_once_in_the_background(explore_run, monkeypatch):
    """While the predictions run (held here), the grid has the true labels, the filters on
    predictions answer 503; then everything, once."""
    release, batches = threading.Event(), []

    def held(model, images, normalization):
        release.wait(60)
        batches.append(len(images))
        return predict_proba(model, images, normalization)

    monkeypatch.setattr(explore, "predict_proba", held)
    args = build_parser().parse_args(["explore", str(explore_run / "run" / "best.npz"),
                                      "--data-dir", str(explore_run / "data"), "--limit", "20"])
    explorer = explorer_for(args).start()
    client = explore.create_app(explorer).test_client()
    assert client.get("/api/progress").json == {"done": 0, "total": 20, "ready": False,
                                                "error": None}
    labels = load_dataset("fashion-mnist", "test", data_dir=explore_run / "data").labels[:20]
    grid = client.get("/api/test-images?limit=15").json
    assert grid["total"] == 20 and [image["label"] for image in grid["images"]] == \
        labels[:15].tolist()
    assert {(image["predicted"], image["confidence"]) for image in grid["images"]} == \
        {(None, None)}
    label = int(labels[0])
    assert client.get(f"/api/test-images?label={label}").json["total"] == \
        np.count_nonzero(labels == label)
    for query in ("mistakes=1", "sort=confidence", "predicted=3"):
        waiting = client.get(f"/api/test-images?{query}")
        assert waiting.status_code == 503
        assert "being computed (0 of 20)" in waiting.json["error"]
    assert client.get("/api/confusion").status_code == 503
    assert client.get("/api/images/test-3").status_code == 200   # one image needs no wait
    release.set()
    ready(explorer)
    assert sum(batches) == 20 and max(batches) == explore.PREDICTION_BATCH
    predicted = explorer.probabilities
    assert [image["predicted"] for image in client.get("/api/test-images").json["images"]] == \
        predicted.argmax(axis=1).tolist()
    explorer.start()                       # a second start computes nothing again
    assert explorer.probabilities is predicted


def test_the_predictions_wait_while_a_request_runs_the_model(explore_run, monkeypatch):
    """No batch starts while a request runs the model, nor QUIET_SECONDS after it ended."""
    starts = []

    def watched(model, images, normalization):
        starts.append((explorer.serving, time.monotonic() - explorer.last_request))
        return predict_proba(model, images, normalization)

    monkeypatch.setattr(explore, "predict_proba", watched)
    args = build_parser().parse_args(["explore", str(explore_run / "run" / "best.npz"),
                                      "--data-dir", str(explore_run / "data")])
    explorer = explorer_for(args)
    with explorer.running():               # as a request does
        explorer.start()
        time.sleep(0.3)
        assert starts == [] and explorer.done == 0
    ended = time.monotonic()
    ready(explorer)
    assert len(starts) == -(-40 // explore.PREDICTION_BATCH)   # 40 images
    assert all(serving == 0 and since >= explore.QUIET_SECONDS for serving, since in starts)
    assert time.monotonic() - ended >= explore.QUIET_SECONDS


def test_without_flask_the_error_says_what_to_install(session, monkeypatch):
    monkeypatch.setitem(sys.modules, "flask", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[web\]"'):
        explore.create_app(session[0])


def test_another_host_only_with_a_warning(explore_run):
    """127.0.0.2 is not in the list of loopback names: warned about as any other host (and
    still reachable from this machine only)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "cnnumpy", "explore", "run/best.npz", "--data-dir", "data",
         "--host", "127.0.0.2"], cwd=explore_run, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline()
        assert url.startswith("cnnumpy explore: http://127.0.0.2:"), server.stderr.read()
        port = int(url.split("127.0.0.2:")[1].split("/")[0])
        # the user chose this host: a Host header of any name is answered
        assert http_get("127.0.0.2", port, "/api/info", "explorer.lan")[0] == 200
    finally:
        server.terminate()
        _, error = server.communicate(timeout=30)
    assert "warning: --host 127.0.0.2: the explorer is reachable from other machines" in error


def http_get(address: str, port: int, path: str, host: str) -> tuple[int, dict]:
    """(status, JSON answer) of a GET with the Host header `host`."""
    connection = http.client.HTTPConnection(address, port, timeout=60)
    try:
        connection.request("GET", path, headers={"Host": host})
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


@pytest.mark.parametrize("host", ["evil.example", "evil.example:5000", "127.0.0.1.evil.example",
                                  "localhost.", "10.0.0.7:8000", ""])
def test_a_foreign_host_header_is_refused(session, host):
    """DNS rebinding: a page of evil.example, whose name now points at 127.0.0.1, sends
    requests with its own name as the Host; they get a 400 and the server goes on."""
    _, client, _ = session
    for path in ("/", "/api/info", "/api/images/test-1", "/static/main.js"):
        answer = client.get(path, headers={"Host": host})
        assert answer.status_code == 400
        assert answer.json["error"].startswith(f"Host {host!r} is not this explorer's")
    for name in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST", "localhost"):
        assert client.get("/api/info", headers={"Host": name}).status_code == 200, name


def served(app):
    """(port, stop) of `app` served on 127.0.0.1 in a thread, as `serve` does."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        thread.join(30)
    return server.server_port, stop


def chunked_upload(port: int, data: bytes) -> tuple[int, dict]:
    """(status, JSON answer) of an upload in chunks of 64 KiB, without Content-Length."""
    boundary = "cnnumpyboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            f"filename=\"big.png\"\r\nContent-Type: image/png\r\n\r\n").encode()
    body = head + data + f"\r\n--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", "/api/upload", body=(body[i: i + 65536]
                                                        for i in range(0, len(body), 65536)),
                           headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
                           encode_chunked=True)
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    except (BrokenPipeError, ConnectionResetError) as err:
        pytest.fail(f"the server dropped the connection instead of answering: {err}")
    finally:
        connection.close()


def test_chunked_uploads_without_a_length_are_limited_too(session):
    explorer, _, _ = session
    port, stop = served(explore.create_app(explorer))
    try:
        small = picture_bytes(np.full((28, 28), 90, dtype=np.uint8))
        status, answer = chunked_upload(port, small)
        assert status == 200 and answer["id"].startswith("upload-")
        status, answer = chunked_upload(port, b"\x89PNG\r\n\x1a\n" +
                                        b"\0" * (explore.MAX_UPLOAD_BYTES + 100_000))
        assert status == 413 and "larger than the limit of 4 MiB" in answer["error"]
        assert http_get("127.0.0.1", port, "/api/info", f"127.0.0.1:{port}")[0] == 200
    finally:
        stop()


def test_the_default_host_is_this_machine_only():
    args = build_parser().parse_args(["explore", "x.npz"])
    assert args.host == "127.0.0.1" and args.port == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["explore", "x.npz", "--port", "70000"])


def test_an_installed_package_holds_the_page():
    """pyproject's package data names every file of the page, so a wheel serves it too."""
    import fnmatch
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["cnnumpy"]
    files = [f"{explore.STATIC_FOLDER.name}/{path.name}"
             for path in explore.STATIC_FOLDER.iterdir()]
    assert "explore_static/index.html" in files and "explore_static/main.js" in files
    assert [name for name in files
            if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns)] == []
