// Requests to the explorer's server, and the page's one error line.

const errorLine = () => document.getElementById("error");

export function showError(message) {
  errorLine().textContent = message;
  errorLine().hidden = false;
}

export function clearError() {
  errorLine().hidden = true;
  errorLine().textContent = "";
}

// The JSON answer of `url` (GET, or POST of a FormData); an Error with the server's
// message for a 4xx or 5xx answer.
export async function request(url, form = null) {
  const response = await fetch(url, form ? { method: "POST", body: form } : {});
  const status = `${response.status} ${response.statusText}`;
  const body = await response.json().catch(() => ({ error: status }));
  if (!response.ok) {
    const error = new Error(body.error || status);
    error.status = response.status;
    throw error;
  }
  return body;
}

// "/api/x?a=1&b=2" from a path and the defined values of `args`.
export function url(path, args = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(args)) {
    if (value !== null && value !== undefined && value !== "") query.set(key, value);
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

// Set an <img>'s source and resolve once it is decoded (reject with the server's message).
export function loadImage(img, source) {
  return new Promise((resolve, reject) => {
    img.onload = () => resolve(img);
    img.onerror = async () => {
      const answer = await fetch(source).then((r) => r.json()).catch(() => ({}));
      reject(new Error(answer.error || `could not load ${source}`));
    };
    img.src = source;
  });
}
