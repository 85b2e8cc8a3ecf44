// The Prediction and Inside panels for the chosen image: top-k bars, the image as the model
// sees it, every layer's feature maps; a click on a unit draws its receptive field and its
// input gradient; the saliency of any class.
import { clearError, loadImage, request, showError, url } from "./api.js";

const MAX_WIDTH = 720;    // CSS pixels of a layer's mosaic, at most (shown at an integer scale)
let info = null;
let chosen = null;        // the image id
const canvases = new Map();   // layer name -> the canvas of its mosaic

function showBars(prediction) {
  const bars = document.getElementById("topk");
  bars.replaceChildren(...prediction.top.map((entry) => {
    const row = document.createElement("div");
    row.className = "bar";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = `${(100 * entry.probability).toFixed(1)}%`;
    const track = document.createElement("div");
    track.append(fill);
    row.append(entry.class, track, `${(100 * entry.probability).toFixed(1)}%`);
    return row;
  }));
  document.getElementById("predicted").textContent = prediction.predicted;
}

// Geometry of a layer's mosaic (as the server draws it: `columns` tiles a row, `gap` pixels
// between them) -> the unit under a point of the mosaic, or null in a gap.
function unitAt(layer, x, y) {
  const [, height, width] = layer.shape;
  const column = Math.floor(x / (width + layer.gap));
  const row = Math.floor(y / (height + layer.gap));
  const inX = x - column * (width + layer.gap);
  const inY = y - row * (height + layer.gap);
  const channel = row * layer.columns + column;
  const inGap = inX >= width || inY >= height;
  if (inGap || column >= layer.columns || channel >= layer.maps) return null;
  return { channel, row: inY, column: inX };
}

function layerFigure(layer) {
  const [maps, height, width] = layer.shape;
  const scale = Math.max(1, Math.floor(MAX_WIDTH / layer.mosaic.width));
  const div = document.createElement("div");
  div.className = "layer";
  div.style.marginLeft = `${(layer.depth - 1) * 1.5}em`;
  const title = document.createElement("h4");
  const name = document.createElement("b");
  name.textContent = layer.name;
  const shown = layer.maps < maps ? ` (first ${layer.maps} maps shown)` : "";
  title.append(name, ` ${layer.type}: output ${maps}×${height}×${width}${shown}, ` +
    `receptive field ${layer.field.join("×")}, jump ${layer.jump.join("×")}`);
  const canvas = document.createElement("canvas");   // the mosaic, shown `scale` times larger
  canvas.className = "maps";
  canvas.dataset.layer = layer.name;
  canvas.width = layer.mosaic.width;
  canvas.height = layer.mosaic.height;
  canvas.style.width = `${layer.mosaic.width * scale}px`;
  canvas.style.height = `${layer.mosaic.height * scale}px`;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `feature maps of ${layer.name}`);
  canvases.set(layer.name, canvas);
  const marker = document.createElement("div");   // the clicked unit
  marker.className = "unit-marker";
  marker.hidden = true;
  Object.assign(marker.style, { width: `${scale}px`, height: `${scale}px` });
  canvas.addEventListener("click", (event) => {
    const x = Math.floor(event.offsetX / scale);
    const y = Math.floor(event.offsetY / scale);
    if (!unitAt(layer, x, y)) return;
    document.querySelectorAll(".unit-marker").forEach((other) => { other.hidden = true; });
    Object.assign(marker.style, { left: `${x * scale + 1}px`, top: `${y * scale + 1}px` });
    marker.hidden = false;
    showUnit(layer, unitAt(layer, x, y));
  });
  const frame = document.createElement("span");
  frame.className = "maps-frame";
  frame.append(canvas, marker);
  div.append(title, frame);
  return div;
}

export function setUpInside(information) {
  info = information;
  document.getElementById("layers").replaceChildren(...info.layers.map(layerFigure));
  const select = document.getElementById("saliency-class");
  info.classes.forEach((name, k) => select.add(new Option(name, k)));
  select.addEventListener("change", showSaliency);
}

function showSaliency() {
  if (!chosen) return;
  const img = document.getElementById("saliency");
  img.hidden = false;
  const target = document.getElementById("saliency-class").value;
  loadImage(img, url(`/api/images/${chosen}/saliency.png`, { class: target })).catch(
    (error) => showError(error.message));
}

// Every layer's maps of image `id`: one image of all their mosaics, one under the other; each
// layer's part of it (mosaic.height rows from mosaic.top, mosaic.width columns from the left)
// drawn on its canvas. Nothing is drawn when another image was chosen meanwhile.
async function showMaps(id) {
  if (!info.layers.length) return;
  const atlas = await loadImage(new Image(), `/api/images/${id}/maps.png`);
  if (chosen !== id) return;
  for (const layer of info.layers) {
    const { top, width, height } = layer.mosaic;
    canvases.get(layer.name).getContext("2d").drawImage(atlas, 0, top, width, height,
      0, 0, width, height);
  }
}

// Choose an image: its prediction, its view and every layer's maps.
export async function choose(id, name) {
  chosen = id;
  try {
    const prediction = await request(`/api/images/${id}`);
    if (chosen !== id) return;   // another image was chosen meanwhile: it shows its own
    clearError();
    document.getElementById("chosen-name").textContent = name;
    showBars(prediction);
    document.getElementById("saliency-class").value = String(prediction.top[0].index);
    for (const hidden of ["field-box", "gradient-box", "unit-gradient"]) {
      document.getElementById(hidden).hidden = true;
    }
    document.querySelectorAll(".unit-marker").forEach((marker) => { marker.hidden = true; });
    await Promise.all([
      loadImage(document.getElementById("model-view"), `/api/images/${id}/input.png`),
      showMaps(id),
    ]);
    if (chosen !== id) return;
    showSaliency();
    document.body.dataset.chosen = id;   // the page is ready for this image
  } catch (error) {
    showError(error.message);
  }
}

// Draw the part of a unit's field inside the image (dashed when the field reaches into the
// padding) over its frame, a square of input pixels; its data-* keep the input pixels.
function placeBox(id, answer) {
  const [, rows, columns] = info.input_shape;
  const box = document.getElementById(id);
  const frame = box.parentElement.getBoundingClientRect();
  const { top, left, height, width } = answer.box;
  Object.assign(box.dataset, { top, left, height, width });
  Object.assign(box.style, {
    top: `${(top * frame.height) / rows}px`, left: `${(left * frame.width) / columns}px`,
    height: `${(height * frame.height) / rows}px`, width: `${(width * frame.width) / columns}px`,
  });
  box.classList.toggle("clipped", answer.clipped);
  box.hidden = false;
}

async function showUnit(layer, unit) {
  const args = { layer: layer.name, ...unit };
  try {
    const answer = await request(url(`/api/images/${chosen}/unit`, args));
    const gradient = document.getElementById("unit-gradient");
    gradient.hidden = false;
    await loadImage(gradient, url(`/api/images/${chosen}/unit.png`, args));
    placeBox("field-box", answer);      // on the input and on the gradient, to compare
    placeBox("gradient-box", answer);
    const field = answer.field;
    const text = `${layer.name}[map ${unit.channel}, row ${unit.row}, column ${unit.column}]`;
    document.getElementById("unit-caption").textContent = `|d ${text} / d input|`;
    document.getElementById("unit-info").textContent = `${text} sees input rows ` +
      `${field.top}…${field.top + field.height - 1}, columns ${field.left}…` +
      `${field.left + field.width - 1} (${field.height}×${field.width} pixels` +
      `${answer.clipped ? ", partly in the padding: dashed, the part inside the image" : ""}).`;
    document.getElementById("unit-info").dataset.unit =
      [unit.channel, unit.row, unit.column].join(",");
    clearError();
  } catch (error) {
    showError(error.message);
  }
}
