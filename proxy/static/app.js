// cityseg image explorer: plain JS against the proxy's JSON API (no framework, no CDN).
"use strict";

const API = "/api/v1";
const CATEGORIES = JSON.parse(document.getElementById("categories").textContent);
const PALETTE = CATEGORIES.map((c) => [1, 3, 5].map((i) => parseInt(c.color.slice(i, i + 2), 16)));
const $ = (id) => document.getElementById(id);

const state = { images: [], total: 0, current: null, masks: { prediction: null, truth: null } };

async function fetchJson(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// A PNG of category ids (one channel) becomes a data URL drawn in the category palette.
function colorizeMask(base64Png) {
  return new Promise((resolve, reject) => {
    const source = new Image();
    source.onload = () => {
      const canvas = document.createElement("canvas");
      canvas.width = source.naturalWidth;
      canvas.height = source.naturalHeight;
      const context = canvas.getContext("2d");
      context.drawImage(source, 0, 0);
      const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
      const data = pixels.data;
      for (let i = 0; i < data.length; i += 4) {
        const color = PALETTE[data[i]] || PALETTE[0];
        data[i] = color[0]; data[i + 1] = color[1]; data[i + 2] = color[2]; data[i + 3] = 255;
      }
      context.putImageData(pixels, 0, 0);
      resolve(canvas.toDataURL("image/png"));
    };
    source.onerror = () => reject(new Error("cannot decode mask"));
    source.src = `data:image/png;base64,${base64Png}`;
  });
}

function showError(element, message) {
  element.textContent = message;
  element.hidden = !message;
}

function formatRatio(value) {
  return value === null || value === undefined ? "n/a" : `${(value * 100).toFixed(1)}%`;
}

// --- the id list ---------------------------------------------------------------------------

async function loadImages() {
  const params = new URLSearchParams({ limit: "1000" });
  if ($("split-filter").value) params.set("split", $("split-filter").value);
  if ($("city-filter").value) params.set("city", $("city-filter").value);
  try {
    const body = await fetchJson(`${API}/images?${params}`);
    state.images = body.images;
    state.total = body.total;
    fillFilters(body);
    renderList();
  } catch (err) {
    $("list-count").textContent = `cannot list images: ${err.message}`;
  }
}

function fillFilters(body) {
  const fill = (select, values) => {
    if (select.options.length > 1) return;
    for (const value of values) select.add(new Option(value, value));
  };
  fill($("split-filter"), Object.keys(body.splits).filter((s) => body.splits[s] > 0));
  fill($("city-filter"), body.cities);
}

function renderList() {
  const query = $("search").value.trim().toLowerCase();
  const shown = state.images.filter((image) => image.image_id.includes(query));
  const list = $("id-list");
  list.replaceChildren();
  const options = $("id-options");
  options.replaceChildren();
  for (const image of shown) {
    const item = document.createElement("li");
    item.dataset.id = image.image_id;
    item.className = image.image_id === state.current ? "active" : "";
    item.innerHTML = `<span></span><span class="tag"></span>`;
    item.firstChild.textContent = image.image_id;
    item.lastChild.textContent = image.split;
    item.addEventListener("click", () => showImage(image.image_id));
    list.append(item);
    options.append(new Option(image.image_id));
  }
  const more = state.total > state.images.length ? ` (first ${state.images.length} of ${state.total})` : "";
  $("list-count").textContent = `${shown.length} image${shown.length === 1 ? "" : "s"}${more}`;
}

// --- one image -----------------------------------------------------------------------------

async function showImage(imageId) {
  imageId = imageId.trim();
  if (!imageId) return;
  state.current = imageId;
  $("id-input").value = imageId;
  for (const item of $("id-list").children) item.classList.toggle("active", item.dataset.id === imageId);
  $("result-title").textContent = imageId;
  $("result-meta").textContent = "segmenting…";
  showError($("error"), "");
  const encoded = encodeURIComponent(imageId);
  try {
    const body = await fetchJson(`${API}/images/${encoded}/segmentation`);
    if (state.current !== imageId) return;  // a newer choice won
    const photo = `${API}/images/${encoded}/image.png`;
    state.masks.prediction = await colorizeMask(body.prediction);
    state.masks.truth = body.ground_truth ? await colorizeMask(body.ground_truth) : null;
    $("img-photo").src = photo;
    $("overlay-photo").src = photo;
    $("img-prediction").src = state.masks.prediction;
    if (state.masks.truth) $("img-truth").src = state.masks.truth;
    else $("img-truth").removeAttribute("src");
    updateOverlay();
    $("result-meta").textContent =
      `${body.split} · ${body.city} · ${body.width}×${body.height} px · model ${body.model.name} v${body.model.version}`;
    $("model-version").textContent = body.model.version;
    renderMetrics(body.metrics);
    history.replaceState(null, "", `#${imageId}`);
  } catch (err) {
    $("result-meta").textContent = "";
    showError($("error"), err.message);
    $("scores").hidden = true;
    $("iou-block").hidden = true;
  }
}

function renderMetrics(metrics) {
  $("scores").hidden = !metrics;
  $("iou-block").hidden = !metrics;
  if (!metrics) return;
  $("pixel-accuracy").textContent = formatRatio(metrics.pixel_accuracy);
  $("mean-iou").textContent = formatRatio(metrics.mean_iou);
  const body = $("iou-table").tBodies[0];
  body.replaceChildren();
  for (const category of CATEGORIES) {
    if (!(category.name in metrics.iou)) continue;
    const value = metrics.iou[category.name];
    const row = body.insertRow();
    row.insertCell().innerHTML = `<span class="cat"><span class="swatch" style="background:${category.color}"></span>${category.name}</span>`;
    const number = row.insertCell();
    number.className = "num";
    number.textContent = value === null ? "n/a" : value.toFixed(3);
    const bar = row.insertCell();
    bar.innerHTML = `<div class="bar"><span style="width:${value === null ? 0 : value * 100}%;background:${category.color}"></span></div>`;
  }
}

function updateOverlay() {
  const which = document.querySelector("input[name=overlay]:checked").value;
  const mask = state.masks[which];
  if (mask) $("overlay-mask").src = mask;
  else $("overlay-mask").removeAttribute("src");
  const opacity = $("opacity").value;
  $("overlay-mask").style.opacity = opacity / 100;
  $("opacity-value").textContent = `${opacity}%`;
}

// --- uploads -------------------------------------------------------------------------------

async function uploadImage(event) {
  event.preventDefault();
  const file = $("upload-file").files[0];
  showError($("upload-error"), "");
  if (!file) { showError($("upload-error"), "choose a PNG or JPEG first"); return; }
  const form = new FormData();
  form.append("image", file);
  try {
    const response = await fetch(`${API}/predict?style=color`, { method: "POST", body: form });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error || `HTTP ${response.status}`);
    }
    const blob = await response.blob();
    $("upload-photo").src = URL.createObjectURL(file);
    $("upload-prediction").src = URL.createObjectURL(blob);
    $("upload-model").textContent =
      `(${response.headers.get("X-Model-Name")} v${response.headers.get("X-Model-Version")})`;
    $("upload-result").hidden = false;
  } catch (err) {
    showError($("upload-error"), err.message);
  }
}

// --- readiness -----------------------------------------------------------------------------

async function checkReady() {
  try {
    const body = await fetchJson("/readyz");
    $("ready-dot").className = "dot ready";
    $("ready-dot").title = "model available";
    $("model-version").textContent = Math.max(...body.model.versions);
  } catch (err) {
    $("ready-dot").className = "dot down";
    $("ready-dot").title = err.message;
  }
}

function init() {
  $("id-form").addEventListener("submit", (event) => { event.preventDefault(); showImage($("id-input").value); });
  $("search").addEventListener("input", renderList);
  $("split-filter").addEventListener("change", loadImages);
  $("city-filter").addEventListener("change", loadImages);
  $("opacity").addEventListener("input", updateOverlay);
  for (const radio of document.querySelectorAll("input[name=overlay]")) radio.addEventListener("change", updateOverlay);
  $("upload-form").addEventListener("submit", uploadImage);
  loadImages();
  checkReady();
  if (location.hash.length > 1) showImage(decodeURIComponent(location.hash.slice(1)));
}

init();
