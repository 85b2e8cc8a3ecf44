// The explorer page: load the model's description, fill every panel; the test-image grid is
// shown at once with the true labels, and completed (predicted labels, the filters that need
// them, the confusion matrix) once the server has predicted the test set.
import { request, showError } from "./api.js";
import { predictionsReady, setUpInput, showCell, showGrid } from "./input.js";
import { choose, setUpInside } from "./inside.js";
import { showConfusion, showCurves, showSummary } from "./run.js";

async function waitForPredictions() {
  const line = document.getElementById("progress");
  for (;;) {
    const progress = await request("/api/progress");
    if (progress.error) throw new Error(`test-set predictions failed: ${progress.error}`);
    if (progress.ready) {
      line.textContent = `${progress.total} test images predicted`;
      return;
    }
    line.textContent = `predicting the test set: ${progress.done} of ${progress.total}…`;
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
}

async function start() {
  const info = await request("/api/info");
  document.getElementById("model-name").textContent =
    `${info.model}, input ${info.input_shape.join("×")}, ${info.dataset} test set`;
  setUpInside(info);
  setUpInput(info, choose);
  showSummary().catch((error) => showError(error.message));
  showCurves();
  await Promise.all([showGrid(), waitForPredictions()]);
  await predictionsReady();
  await showConfusion(showCell);
  document.body.dataset.ready = "true";
}

start().catch((error) => showError(error.message));
