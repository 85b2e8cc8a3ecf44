// The run panel: learning curves from metrics.jsonl, the confusion matrix, the summary.
import { request } from "./api.js";

const COLORS = {
  train_loss: "#2c7be5", val_loss: "#8fb8f0", train_acc: "#e5632c", val_acc: "#f0b38f",
};

// Loss (left) and accuracy (right) against the epoch, each panel scaled to its own range.
export async function showCurves() {
  const note = document.getElementById("curves-note");
  let history;
  try {
    history = await request("/api/metrics");
  } catch (error) {
    note.textContent = error.message;
    return;
  }
  const canvas = document.getElementById("curves");
  const pen = canvas.getContext("2d");
  const half = canvas.width / 2;
  const margin = 30;
  [["loss", ["train_loss", "val_loss"]], ["accuracy", ["train_acc", "val_acc"]]].forEach(
    ([title, keys], panel) => {
      const x0 = panel * half + margin;
      const width = half - 2 * margin;
      const height = canvas.height - 2 * margin;
      const values = history.flatMap((entry) => keys.map((key) => entry[key]))
        .filter((v) => typeof v === "number");
      const low = Math.min(...values);
      const high = Math.max(...values);
      const epochs = history.map((entry) => entry.epoch);
      const first = Math.min(...epochs);
      const span = Math.max(Math.max(...epochs) - first, 1);
      pen.strokeStyle = "#999";
      pen.strokeRect(x0, margin, width, height);
      pen.fillStyle = "#222";
      const range = `${low.toPrecision(3)} … ${high.toPrecision(3)}`;
      pen.fillText(`${title} (${range}) per epoch`, x0, margin - 8);
      for (const key of keys) {
        const points = history.filter((entry) => typeof entry[key] === "number");
        if (!points.length) continue;
        pen.strokeStyle = pen.fillStyle = COLORS[key];
        pen.beginPath();
        points.forEach((entry, i) => {
          const x = x0 + ((entry.epoch - first) / span) * width;
          const y = margin + height - ((entry[key] - low) / (high - low || 1)) * height;
          if (i === 0) pen.moveTo(x, y); else pen.lineTo(x, y);
          pen.fillRect(x - 2, y - 2, 4, 4);
        });
        pen.stroke();
        pen.fillText(key, x0 + 6, margin + 14 + 12 * keys.indexOf(key));
      }
    });
  note.textContent = `${history.length} epochs from metrics.jsonl`;
}

export async function showConfusion(openCell) {
  const answer = await request("/api/confusion");
  const table = document.getElementById("confusion");
  const head = table.insertRow();
  head.append(document.createElement("th"));
  answer.classes.forEach((name) => {
    const th = document.createElement("th");
    th.textContent = name;
    th.title = `predicted ${name}`;
    head.append(th);
  });
  answer.counts.forEach((counts, label) => {
    const row = table.insertRow();
    const th = document.createElement("th");
    th.textContent = answer.classes[label];
    th.title = `true ${answer.classes[label]}`;
    row.append(th);
    const total = Math.max(1, counts.reduce((a, b) => a + b, 0));
    counts.forEach((count, predicted) => {
      const cell = row.insertCell();
      cell.textContent = count;
      const share = count / total;
      cell.style.background = `rgba(44, 123, 229, ${share.toFixed(3)})`;
      cell.style.color = share > 0.5 ? "white" : "black";
      cell.title = `${count} test images of ${answer.classes[label]} predicted as ` +
        answer.classes[predicted];
      cell.addEventListener("click", () => openCell(label, predicted));
    });
  });
  document.getElementById("confusion-note").textContent =
    `accuracy ${(100 * answer.accuracy).toFixed(2)}%; cells open the test images they count.`;
}

export async function showSummary() {
  const answer = await request("/api/summary");
  document.getElementById("summary").textContent = answer.text;
}
