// The Input panel: the test-image grid with its filters, the upload and the drawing canvas.
import { clearError, request, showError, url } from "./api.js";

const PAGE = 60;
let state = { info: null, choose: null, offset: 0, chosenTile: null, filter: {} };

function filters() {
  return {
    label: document.getElementById("filter-class").value,
    mistakes: document.getElementById("filter-mistakes").checked ? 1 : "",
    sort: document.getElementById("sort").value,
    ...state.filter,
  };
}

function tile(image) {
  const names = state.info.classes;
  const div = document.createElement("div");
  div.className = "tile" + (image.label !== image.predicted ? " mistake" : "");
  div.dataset.index = image.index;
  div.title = `test image ${image.index}: true ${names[image.label]}, predicted ` +
    `${names[image.predicted]} (${(100 * image.confidence).toFixed(1)}%)`;
  const img = document.createElement("img");
  img.src = `/api/test-images/${image.index}.png`;
  img.alt = `test image ${image.index}`;
  div.append(img, `${names[image.label]}`, document.createElement("br"),
    `→ ${names[image.predicted]}`);
  div.addEventListener("click", () => {
    if (state.chosenTile) state.chosenTile.classList.remove("chosen");
    div.classList.add("chosen");
    state.chosenTile = div;
    const name = `test image ${image.index} (true class: ${names[image.label]})`;
    state.choose(`test-${image.index}`, name);
  });
  return div;
}

// Show the first page of test images matching the filters (more=true: the next page).
export async function showGrid(more = false) {
  const grid = document.getElementById("grid");
  state.offset = more ? state.offset + PAGE : 0;
  try {
    const query = { ...filters(), offset: state.offset, limit: PAGE };
    const answer = await request(url("/api/test-images", query));
    if (!more) grid.replaceChildren();
    grid.append(...answer.images.map(tile));
    const shown = Math.min(answer.total, state.offset + PAGE);
    document.getElementById("grid-count").textContent = `${shown} of ${answer.total} images`;
    document.getElementById("more").hidden = shown >= answer.total;
  } catch (error) {
    showError(error.message);
  }
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
