// The Input panel: the test-image grid with its filters, the upload and the drawing canvas.
// Until the test set is predicted, the grid shows the true labels only and the filters on
// predictions (mistakes only, the sort by confidence) are disabled.
import { clearError, request, showError, url } from "./api.js";

const PAGE = 60;
let state = { info: null, choose: null, chosenTile: null, filter: {} };

function filters() {
  return {
    label: document.getElementById("filter-class").value,
    mistakes: document.getElementById("filter-mistakes").checked ? 1 : "",
    sort: document.getElementById("sort").value,
    ...state.filter,
  };
}

// One image of the grid; image.predicted is null before the test set is predicted.
function tile(image) {
  const names = state.info.classes;
  const known = image.predicted !== null;
  const div = document.createElement("div");
  div.className = "tile" + (known && image.label !== image.predicted ? " mistake" : "");
  if (state.chosenTile && state.chosenTile.dataset.index === String(image.index)) {
    div.classList.add("chosen");
    state.chosenTile = div;
  }
  div.dataset.index = image.index;
  div.title = `test image ${image.index}: true ${names[image.label]}, ` + (known
    ? `predicted ${names[image.predicted]} (${(100 * image.confidence).toFixed(1)}%)`
    : "not predicted yet");
  const img = document.createElement("img");
  img.src = `/api/test-images/${image.index}.png`;
  img.alt = `test image ${image.index}`;
  div.append(img, `${names[image.label]}`, document.createElement("br"),
    `→ ${known ? names[image.predicted] : "…"}`);
  div.addEventListener("click", () => {
    if (state.chosenTile) state.chosenTile.classList.remove("chosen");
    div.classList.add("chosen");
    state.chosenTile = div;
    const name = `test image ${image.index} (true class: ${names[image.label]})`;
    state.choose(`test-${image.index}`, name);
  });
  return div;
}

// Show the first `limit` test images matching the filters (more=true: the next PAGE).
export async function showGrid(more = false, limit = PAGE) {
  const grid = document.getElementById("grid");
  const offset = more ? grid.children.length : 0;
  try {
    const query = { ...filters(), offset, limit: more ? PAGE : limit };
    const answer = await request(url("/api/test-images", query));
    if (!more) grid.replaceChildren();
    grid.append(...answer.images.map(tile));
    const shown = grid.children.length;
    document.getElementById("grid-count").textContent = `${shown} of ${answer.total} images`;
    document.getElementById("more").hidden = shown >= answer.total;
  } catch (error) {
    showError(error.message);
  }
}

// Once the test set is predicted: enable the filters on predictions, and show the images
// already in the grid again, with their predicted labels.
export async function predictionsReady() {
  for (const id of ["filter-mistakes", "sort"]) document.getElementById(id).disabled = false;
  const shown = document.querySelectorAll("#grid .tile").length;
  await showGrid(false, Math.min(Math.max(shown, PAGE), 500));
}

// The grid of the images of one confusion-matrix cell (true class, predicted class).
export function showCell(label, predicted) {
  document.getElementById("filter-class").value = String(label);
  document.getElementById("filter-mistakes").checked = false;
  state.filter = { predicted };
  showGrid().then(() => { state.filter = {}; });
  document.getElementById("input-section").scrollIntoView();
}

async function send(blob, name) {
  const form = new FormData();
  form.append("image", blob, name);
  try {
    const answer = await request("/api/upload", form);
    clearError();
    state.choose(answer.id, name);
  } catch (error) {
    showError(`Upload refused: ${error.message}`);
  }
}

function setUpDrawing() {
  const canvas = document.getElementById("draw");
  const pen = canvas.getContext("2d");
  const clear = () => { pen.fillStyle = "black"; pen.fillRect(0, 0, canvas.width, canvas.height); };
  clear();
  let drawing = false;
  const point = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * canvas.width / box.width,
      (event.clientY - box.top) * canvas.height / box.height];
  };
  canvas.addEventListener("pointerdown", (event) => {
    drawing = true;
    pen.beginPath();
    pen.moveTo(...point(event));
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    pen.lineTo(...point(event));
    pen.strokeStyle = "white";
    pen.lineWidth = 22;
    pen.lineCap = pen.lineJoin = "round";
    pen.stroke();
  });
  window.addEventListener("pointerup", () => { drawing = false; });
  document.getElementById("draw-clear").addEventListener("click", clear);
  document.getElementById("draw-use").addEventListener("click", () =>
    canvas.toBlob((blob) => send(blob, "drawing.png"), "image/png"));
}

export function setUpInput(info, choose) {
  state = { ...state, info, choose };
  const select = document.getElementById("filter-class");
  info.classes.forEach((name, k) => select.add(new Option(name, k)));
  for (const id of ["filter-class", "filter-mistakes", "sort"]) {
    document.getElementById(id).addEventListener("change", () => showGrid());
  }
  document.getElementById("more").addEventListener("click", () => showGrid(true));
  document.getElementById("upload").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) send(file, file.name);
    event.target.value = "";
  });
  if (info.drawable) {
    document.getElementById("draw-box").hidden = false;
    setUpDrawing();
  }
}
