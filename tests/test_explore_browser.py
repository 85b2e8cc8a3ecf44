"""The explorer end to end in a real browser: `cnnumpy explore` runs as a subprocess on the
checkpoint of the `explore_run` fixture, and Chromium (Debian's `chromium`, headless), driven
by Playwright, uses the page as a person would. Screenshots go to docs/explorer/e2e-*.png
(ignored by git; the README shows one taken the same way of a model trained on Fashion-MNIST).

Needs Playwright (`pip install playwright`, in the extra dev) and a Chromium executable on
PATH (`apt-get install chromium`; Playwright's own browser download is not needed). Without
them the tests are skipped, unless CNNUMPY_REQUIRE_BROWSER=1 (as `.ci/run` sets it): then
they fail, so CI cannot pass without having run them."""

import base64
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REQUIRED = os.environ.get("CNNUMPY_REQUIRE_BROWSER") == "1"


def missing(reason: str) -> None:
    """Skip the tests for want of `reason`; fail them when the browser is required."""
    if REQUIRED:
        pytest.fail(f"CNNUMPY_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


try:
    from playwright import sync_api
except ImportError:
    missing("the browser tests need Playwright: pip install playwright")
if importlib.util.find_spec("flask") is None:
    missing("the explorer needs Flask (the extra web)")

from PIL import Image  # noqa: E402  (Pillow comes with Flask in the extra web)

import cnnumpy as cn  # noqa: E402
from cnnumpy import explore, trace  # noqa: E402
from cnnumpy.cli import build_parser, explorer_for  # noqa: E402
from cnnumpy.data import load_dataset, normalize  # noqa: E402
from cnnumpy.data.images import decode_picture, to_model_input  # noqa: E402
from cnnumpy.shapes import field_box, traced_fields  # noqa: E402
from cnnumpy.train import predict_proba  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "explorer"
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def server(explore_run):
    """The URL of `cnnumpy explore run/best.npz` on a free port, stopped by SIGTERM after (as
    by Ctrl-C; a job started in the background of a script ignores SIGINT, as CI's may)."""
    log = open(explore_run / "explore.log", "w")  # the request log; a pipe could fill up
    process = subprocess.Popen(
        [sys.executable, "-m", "cnnumpy", "explore", "run/best.npz", "--data-dir", "data"],
        cwd=explore_run, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        line = process.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, f"no URL printed: {line!r}; {(explore_run / 'explore.log').read_text()}"
        yield url.group(0)
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
        log.close()
    assert process.returncode == 0 and "stopped" in out


@pytest.fixture(scope="module")
def chromium_browser():
    """Headless Chromium."""
    if CHROMIUM is None:
        missing("no Chromium on PATH: apt-get install chromium")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox"])
        yield chromium
        chromium.close()


def new_tab(browser, errors: list):
    """A tab whose script errors and failed requests are appended to `errors`."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("requestfailed", lambda request: errors.append(request.url))
    return page


@pytest.fixture(scope="module")
def tab(chromium_browser, server):
    """A tab with the page, loaded and ready (the test set predicted); any script error or
    failed request fails the module."""
    errors = []
    page = new_tab(chromium_browser, errors)
    page.goto(server)
    page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
    yield page
    page.close()
    assert not errors, errors


def info(server) -> dict:
    with urllib.request.urlopen(server + "api/info") as answer:
        return json.load(answer)


def choose_test_image(page, index: int) -> None:
    page.click(f'.tile[data-index="{index}"]')
    page.wait_for_selector(f'body[data-chosen="test-{index}"]', timeout=WAIT_MS)


# Per <img> or <canvas> of the page: its size in pixels of the picture and the number of
# distinct colours, read by drawing it on a canvas (a blank or undecoded picture has one colour
# or no pixels).
COLOURS = """(selector) => [...document.querySelectorAll(selector)].map((img) => {
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth ?? img.width;
  canvas.height = img.naturalHeight ?? img.height;
  const pen = canvas.getContext("2d");
  pen.drawImage(img, 0, 0);
  const colours = new Set();
  if (canvas.width && canvas.height) {
    const data = pen.getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 0; i < data.length; i += 4) {
      colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
    }
  }
  return { name: img.dataset.layer || img.id, width: canvas.width, height: canvas.height,
           colours: colours.size };
})"""


def test_a_test_image_is_predicted_as_cnnumpy_predict_does(tab, explore_run, tmp_path):
    choose_test_image(tab, 5)
    shown = tab.text_content("#predicted")
    image = load_dataset("fashion-mnist", "test", data_dir=explore_run / "data").images[5]
    np.save(tmp_path / "five.npy", image)
    result = subprocess.run([sys.executable, "-m", "cnnumpy", "predict", "run/best.npz",
                             str(tmp_path / "five.npy"), "--json", "--top-k", "1"],
                            cwd=explore_run, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert shown == json.loads(result.stdout)[0]["top"][0]["class"]
    assert tab.locator("#topk .bar").count() == 5
    assert "test image 5" in tab.text_content("#chosen-name")


def test_feature_maps_are_decoded_and_not_blank(tab, server, explore_run):
    """Each layer's canvas holds, pixel for pixel, the mosaic of the layer's output for the
    chosen image (`explore.maps_mosaic`): its part of the one maps.png of all layers."""
    choose_test_image(tab, 5)
    layers = {layer["name"]: layer for layer in info(server)["layers"]}
    maps = tab.evaluate(COLOURS, "canvas.maps")
    assert [entry["name"] for entry in maps] == list(layers)
    for entry in maps:
        layer = layers[entry["name"]]
        _, height, width = layer["shape"]
        rows = -(-layer["maps"] // layer["columns"])
        assert (entry["width"], entry["height"]) == (layer["columns"] * (width + 1) - 1,
                                                     rows * (height + 1) - 1), entry
        assert entry["colours"] > 16, entry    # grey levels of the maps, and the gaps
    checkpoint = cn.load_checkpoint(explore_run / "run" / "best.npz")
    image = normalize(load_dataset("fashion-mnist", "test", data_dir=explore_run / "data")
                      .images[5:6], checkpoint.arrays["normalization/mean"],
                      checkpoint.arrays["normalization/std"])
    recorded = trace.record(checkpoint.build_model(), image.astype(np.float32))
    drawn = tab.evaluate("[...document.querySelectorAll('canvas.maps')].map((canvas) => "
                         "canvas.toDataURL('image/png'))")
    for name, data_url in zip(layers, drawn):
        with Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as picture:
            pixels = np.asarray(picture.convert("RGB"))
        np.testing.assert_array_equal(pixels, explore.maps_mosaic(recorded.call(name).output[0]),
                                      err_msg=name)
    for picture in tab.evaluate(COLOURS, "#model-view, #saliency"):
        assert picture["width"] == 28 and picture["colours"] > 2, picture


def expected_box(explore_run, layer: str, unit) -> dict:
    """The field of `unit` of `layer` by cnnumpy.shapes, clipped to the 28x28 image."""
    model = cn.load_checkpoint(explore_run / "run" / "best.npz").build_model()
    recorded = trace.record(model, np.zeros((1, 1, 28, 28), np.float32))
    top, left, height, width = field_box(traced_fields(recorded)[id(recorded.call(layer).output)],
                                         unit)
    return {"top": max(top, 0), "left": max(left, 0),
            "height": min(top + height, 28) - max(top, 0),
            "width": min(left + width, 28) - max(left, 0)}


def click_unit(tab, layer: dict, channel: int, row: int, column: int) -> None:
    """Click the middle of unit (row, column) of map `channel` in the layer's mosaic."""
    canvas = tab.locator(f'canvas.maps[data-layer="{layer["name"]}"]')
    scale = canvas.evaluate("(canvas) => canvas.clientWidth / canvas.width")
    _, height, width = layer["shape"]
    tile_row, tile_column = divmod(channel, layer["columns"])
    x = tile_column * (width + layer["gap"]) + column + 0.5
    y = tile_row * (height + layer["gap"]) + row + 0.5
    canvas.click(position={"x": x * scale, "y": y * scale})
    tab.wait_for_selector(f'#unit-info[data-unit="{channel},{row},{column}"]', timeout=WAIT_MS)
    tab.wait_for_selector("#field-box:not([hidden])", timeout=WAIT_MS)


def drawn_box(tab) -> tuple[dict, dict]:
    """The field box's data (input pixels) and its place on the input image in pixels of it."""
    box = tab.locator("#field-box")
    data = {key: int(box.get_attribute(f"data-{key}"))
            for key in ("top", "left", "height", "width")}
    frame = tab.locator("#input-frame").bounding_box()
    drawn = box.bounding_box()
    scale = frame["width"] / 28
    placed = {"top": (drawn["y"] - frame["y"]) / scale, "left": (drawn["x"] - frame["x"]) / scale,
              "height": drawn["height"] / scale, "width": drawn["width"] / scale}
    return data, placed


def test_a_clicked_unit_shows_its_receptive_field(tab, server, explore_run):
    choose_test_image(tab, 3)
    layers = {layer["name"]: layer for layer in info(server)["layers"]}
    for name, (channel, row, column) in [("conv2", (3, 2, 4)), ("pool2", (17, 6, 1)),
                                         ("conv2", (0, 0, 0))]:
        click_unit(tab, layers[name], channel, row, column)
        data, placed = drawn_box(tab)
        expected = expected_box(explore_run, name, (row, column))
        assert data == expected, (name, row, column)
        for key, value in expected.items():
            assert placed[key] == pytest.approx(value, abs=0.2), (key, placed)
        clipped = tab.locator("#field-box").evaluate("(box) => box.classList.contains('clipped')")
        assert clipped == (expected["height"] < layers[name]["field"][0])
        gradient = tab.evaluate(COLOURS, "#unit-gradient")[0]
        assert gradient["width"] == 28 and gradient["colours"] > 1
        assert {key: int(tab.get_attribute("#gradient-box", f"data-{key}"))
                for key in data} == data                 # the same box over the gradient
        marker = tab.locator(f'canvas.maps[data-layer="{name}"] + .unit-marker')
        assert marker.is_visible() and tab.locator(".unit-marker:visible").count() == 1
    assert data == {"top": 0, "left": 0, "height": 5, "width": 5}   # the corner, in the padding
    click_unit(tab, layers["conv2"], 3, 2, 4)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=SCREENSHOTS / "e2e-page.png")
    tab.locator("#prediction-section").screenshot(path=SCREENSHOTS / "e2e-unit.png")


def test_a_bad_upload_shows_its_error_and_a_good_one_is_chosen(tab, tmp_path):
    tab.set_input_files("#upload", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                            "buffer": b"not a picture"}])
    tab.wait_for_selector("#error:not([hidden])", timeout=WAIT_MS)
    assert tab.text_content("#error") == \
        "Upload refused: notes.txt: not a PNG or JPEG picture"
    tab.locator("#input-section").screenshot(path=SCREENSHOTS / "e2e-upload-error.png")
    Image.fromarray(np.full((56, 40), 200, dtype=np.uint8)).save(tmp_path / "grey.png")
    tab.set_input_files("#upload", str(tmp_path / "grey.png"))
    tab.wait_for_selector('body[data-chosen^="upload-"]', timeout=WAIT_MS)
    assert tab.is_hidden("#error") and tab.text_content("#chosen-name") == "grey.png"


def test_a_drawing_is_classified(tab, explore_run):
    """The drawing, read back from the canvas as a PNG and decoded as the server decodes an
    upload (its id is a hash of those pixels), is predicted by predict_proba as shown."""
    canvas = tab.locator("#draw").bounding_box()
    tab.mouse.move(canvas["x"] + 140, canvas["y"] + 40)
    tab.mouse.down()
    tab.mouse.move(canvas["x"] + 140, canvas["y"] + 240, steps=8)
    tab.mouse.up()
    before = tab.get_attribute("body", "data-chosen")
    tab.click("#draw-use")
    tab.wait_for_function("(before) => document.body.dataset.chosen !== before "
                           "&& document.body.dataset.chosen.startsWith('upload-')", arg=before,
                           timeout=WAIT_MS)
    assert tab.text_content("#chosen-name") == "drawing.png"
    drawn = tab.evaluate("document.getElementById('draw').toDataURL('image/png')")
    png = base64.b64decode(drawn.split(",", 1)[1])
    pixels = to_model_input(decode_picture(io.BytesIO(png), 1, "drawing.png"), (1, 28, 28),
                            "drawing.png")
    assert 0 < pixels.mean() < 255                         # the stroke, on black
    assert tab.get_attribute("body", "data-chosen") == \
        "upload-" + hashlib.sha256(pixels.tobytes()).hexdigest()[:16]
    checkpoint = cn.load_checkpoint(explore_run / "run" / "best.npz")
    expected = predict_proba(checkpoint.build_model(), pixels[None],
                             (checkpoint.arrays["normalization/mean"],
                              checkpoint.arrays["normalization/std"]))[0]
    names = checkpoint.metadata["class_names"]
    assert tab.text_content("#predicted") == names[int(expected.argmax())]
    bars = [re.fullmatch(r"(.+?)(\d+\.\d)%", text).groups()
            for text in tab.locator("#topk .bar").all_text_contents()]
    best = np.argsort(-expected, kind="stable")[:5]
    assert [name for name, _ in bars] == [names[k] for k in best]
    np.testing.assert_allclose([float(percent) for _, percent in bars], 100 * expected[best],
                               atol=0.05 + 1e-4)   # shown to 0.1 %


def test_a_confusion_cell_opens_its_images(tab):
    cells = tab.locator("#confusion td")
    counts = [int(text) for text in cells.all_text_contents()]
    busiest = int(np.argmax(counts))
    cells.nth(busiest).click()
    tab.wait_for_function("(count) => document.getElementById('grid-count').textContent "
                           "=== `${count} of ${count} images`", arg=counts[busiest],
                           timeout=WAIT_MS)
    assert tab.locator("#grid .tile").count() == counts[busiest]
    headers = tab.locator("#confusion th").all_text_contents()   # a corner, 10 + 10 classes
    assert len(headers) == 21 and headers[1] == headers[11] == "T-shirt/top"
    assert tab.evaluate("document.getElementById('summary').textContent").startswith(
        "Model: SimpleCNN")
    assert "epochs from metrics.jsonl" in tab.text_content("#curves-note")


def test_the_grid_is_shown_before_the_test_set_is_predicted(chromium_browser, explore_run,
                                                            monkeypatch):
    """The predictions are held (in this process's server) until the grid is checked: it shows
    the true labels, "…" for the predicted ones, the progress and the filters on predictions
    disabled; once released, the same tiles show the predicted labels."""
    from werkzeug.serving import make_server

    release = threading.Event()

    def held(model, images, normalization):  # the background's, not the page's, predictions
        release.wait(WAIT_MS / 1000)
        return predict_proba(model, images, normalization)

    monkeypatch.setattr(explore, "predict_proba", held)
    explorer = explorer_for(build_parser().parse_args(
        ["explore", str(explore_run / "run" / "best.npz"), "--data-dir",
         str(explore_run / "data")])).start()
    server = make_server("127.0.0.1", 0, explore.create_app(explorer), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    errors = []
    page = new_tab(chromium_browser, errors)
    try:
        page.goto(f"http://127.0.0.1:{server.server_port}/")
        page.wait_for_selector('#grid .tile[data-index="39"]', timeout=WAIT_MS)
        names = explorer.class_names
        labels = explorer.test.labels
        tiles = page.locator("#grid .tile").all_inner_texts()
        assert [text.split("\n") for text in tiles] == \
            [[names[label], "→ …"] for label in labels]
        assert page.text_content("#progress") == "predicting the test set: 0 of 40…"
        assert page.is_disabled("#filter-mistakes") and page.is_disabled("#sort")
        assert page.get_attribute("body", "data-ready") is None
        assert explorer.probabilities is None
        release.set()
        page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
        predicted = explorer.probabilities.argmax(axis=1)
        tiles = page.locator("#grid .tile").all_inner_texts()
        assert [text.split("\n") for text in tiles] == \
            [[names[label], f"→ {names[guess]}"] for label, guess in zip(labels, predicted)]
        assert page.is_enabled("#filter-mistakes") and page.is_enabled("#sort")
        assert page.text_content("#progress") == "40 test images predicted"
    finally:
        release.set()
        page.close()
        server.shutdown()
        thread.join(30)
    assert not errors, errors
