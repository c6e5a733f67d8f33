"""The page ``semseg serve`` shows at ``/``: drop an image, see the road overlay.

Plain HTML, CSS and JavaScript inline, nothing fetched from elsewhere (the Content-Security-Policy
header forbids it). The page asks ``/v1/segment?format=label`` for the class indices and composites
the road class over the image on a canvas, so the opacity slider needs no further request; the
road fraction and latency come from the answer's headers.

For a multi-class model (:func:`render_page` with its class colours) the page shows the palette's
legend, tints every pixel in its class colour instead of the road in green, and writes each
class's share of the image next to its legend entry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import numpy as np

from semseg.inference.palette import legend_html

PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'"
    ),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>semseg: try a model</title>
<style>
  :root { font-family: system-ui, sans-serif; color: #1d2327; background: #f4f5f6; }
  body { margin: 0 auto; max-width: 1320px; padding: 1rem 1.5rem 3rem; }
  header { display: flex; flex-wrap: wrap; align-items: baseline; gap: 1rem; }
  h1 { margin: 0.2rem 0; font-size: 1.4rem; }
  #model { color: #5a6570; font-size: 0.9rem; }
  #drop { display: block; margin: 1rem 0; padding: 1.6rem; border: 2px dashed #8a969f;
          border-radius: 10px; background: #fff; text-align: center; cursor: pointer; }
  #drop.over { border-color: #1e8e3e; background: #eaf6ec; }
  #drop input { display: block; margin: 0.8rem auto 0; }
  .controls { display: flex; flex-wrap: wrap; align-items: center; gap: 1.5rem; margin: 0.5rem 0; }
  .controls label { display: flex; align-items: center; gap: 0.5rem; }
  #road-fraction { font-size: 1.2rem; color: #1e8e3e; }
  #status { min-height: 1.3em; color: #5a6570; }
  body[data-state="error"] #status { color: #b3261e; font-weight: 600; }
  #result { display: block; max-width: 100%; height: auto; background: #dde1e4;
            border-radius: 6px; }
  #result[width="0"] { display: none; }
  .legend { display: flex; flex-wrap: wrap; gap: 0.3rem 1.2rem; margin: 0.5rem 0; padding: 0;
            list-style: none; }
  .legend li { display: flex; align-items: center; gap: 0.4rem; }
  .legend .swatch { display: inline-block; width: 0.9rem; height: 0.9rem;
                    border: 1px solid #5a6570; }
  .legend .share { color: #5a6570; }
</style>
</head>
<body data-state="idle">
<header>
  <h1>semseg road segmentation</h1>
  <span id="model">loading model description&hellip;</span>
</header>
<label id="drop" for="file">
  Drop an image here, or choose one (PNG, JPEG, BMP, WebP)
  <input id="file" type="file" accept="image/*">
</label>
<div class="controls">
  <label for="opacity">Overlay opacity
    <input id="opacity" type="range" min="0" max="100" value="50">
    <output id="opacity-value" for="opacity">50%</output>
  </label>
  <span id="road"__ROAD_HIDDEN__>Road: <strong id="road-fraction">&ndash;</strong></span>
  <span id="latency"></span>
</div>
<div id="legend">__LEGEND__</div>
<p id="status" role="status">Choose or drop an image to segment it.</p>
<canvas id="result" width="0" height="0"></canvas>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let model = null;
let picture = null;   // the uploaded image as the browser decodes it (null if it cannot)
let mask = null;      // canvas: road pixels opaque green, the rest transparent
let generation = 0;   // drops answers to uploads that a newer upload replaced
// A multi-class model's class colours ([r, g, b] per class id), null for a road model.
const PALETTE = __PALETTE__;

function setState(state, text) {
  document.body.dataset.state = state;
  $("status").textContent = text;
}

async function loadModel() {
  try {
    const answer = await fetch("v1/model");
    model = await answer.json();
    const size = model.input_size;
    $("model").textContent = model.name + " \\u00b7 classes: " + model.classes.join(", ") +
      " \\u00b7 input " + size.height + "\\u00d7" + size.width + " \\u00b7 backend " +
      model.backend;
  } catch (error) {
    $("model").textContent = "model description unavailable";
  }
}

function opacity() { return Number($("opacity").value) / 100; }

function buildMask(labels, positive) {
  const canvas = document.createElement("canvas");
  canvas.width = labels.width;
  canvas.height = labels.height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(labels, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  const data = pixels.data;
  if (PALETTE) return paintClasses(canvas, context, pixels);
  for (let i = 0; i < data.length; i += 4) {
    const road = data[i] === positive;
    data[i] = 0;
    data[i + 1] = 255;
    data[i + 2] = 0;
    data[i + 3] = road ? 255 : 0;
  }
  context.putImageData(pixels, 0, 0);
  return canvas;
}

function paintClasses(canvas, context, pixels) {
  // each pixel in its class colour (opaque); the legend gets each class's share of the image
  const data = pixels.data;
  const counts = new Array(PALETTE.length).fill(0);
  for (let i = 0; i < data.length; i += 4) {
    const colour = PALETTE[data[i]];
    if (colour) counts[data[i]] += 1;
    data[i] = colour ? colour[0] : 0;
    data[i + 1] = colour ? colour[1] : 0;
    data[i + 2] = colour ? colour[2] : 0;
    data[i + 3] = colour ? 255 : 0;
  }
  context.putImageData(pixels, 0, 0);
  const total = canvas.width * canvas.height;
  document.querySelectorAll("#legend li").forEach((item, index) => {
    let share = item.querySelector(".share");
    if (!share) {
      share = document.createElement("span");
      share.className = "share";
      item.appendChild(share);
    }
    share.textContent = total ? (100 * counts[index] / total).toFixed(1) + "%" : "";
  });
  return canvas;
}

function draw() {
  if (!mask) return;
  const canvas = $("result");
  canvas.width = mask.width;
  canvas.height = mask.height;
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.globalAlpha = 1;
  if (picture) {
    context.drawImage(picture, 0, 0, mask.width, mask.height);
  } else {
    context.fillStyle = "#000";
    context.fillRect(0, 0, mask.width, mask.height);
  }
  context.globalAlpha = opacity();
  context.drawImage(mask, 0, 0);
  context.globalAlpha = 1;
}

async function errorText(answer) {
  try {
    const body = await answer.json();
    if (body && body.error) return answer.status + ": " + body.error;
  } catch (error) { /* not JSON */ }
  return answer.status + ": " + answer.statusText;
}

async function segment(file) {
  const token = ++generation;
  setState("busy", "Segmenting " + file.name + "\\u2026");
  const form = new FormData();
  form.append("file", file, file.name);
  let answer;
  try {
    answer = await fetch("v1/segment?format=label", { method: "POST", body: form });
  } catch (error) {
    if (token === generation) setState("error", "The request failed: " + error);
    return;
  }
  if (!answer.ok) {
    const text = await errorText(answer);
    if (token === generation) setState("error", text);
    return;
  }
  const fraction = Number(answer.headers.get("X-Road-Fraction"));
  const latency = answer.headers.get("X-Latency-Ms");
  const options = { colorSpaceConversion: "none", premultiplyAlpha: "none" };
  const labels = await createImageBitmap(await answer.blob(), options);
  let shown = null;
  try {
    shown = await createImageBitmap(file, { colorSpaceConversion: "none" });
  } catch (error) {
    shown = null;  // a format the browser cannot draw (TIFF, PPM): show the mask alone
  }
  if (token !== generation) return;
  const positive = model && Number.isInteger(model.positive_class) ? model.positive_class : 1;
  mask = buildMask(labels, positive);
  picture = shown;
  draw();
  $("road-fraction").textContent = (100 * fraction).toFixed(1) + "%";
  $("latency").textContent = latency ? "server time " + latency + " ms" : "";
  const size = labels.width + "\\u00d7" + labels.height;
  setState("done", file.name + " (" + size + ")" +
    (picture ? "" : ": this browser cannot show the image itself; road mask only"));
}

function take(files) {
  if (files && files.length) segment(files[0]);
}

$("file").addEventListener("change", (event) => take(event.target.files));
$("opacity").addEventListener("input", () => {
  $("opacity-value").textContent = $("opacity").value + "%";
  draw();
});
const drop = $("drop");
["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
  event.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((name) => drop.addEventListener(name, (event) => {
  event.preventDefault();
  drop.classList.remove("over");
}));
drop.addEventListener("drop", (event) => take(event.dataTransfer.files));
loadModel();
</script>
</body>
</html>
"""


PLACEHOLDER = re.compile(r"__(ROAD_HIDDEN|LEGEND|PALETTE)__")


def render_page(names: Sequence[str], colours: np.ndarray | None) -> str:
    """The page for a model: with ``colours`` (a multi-class model's ``(K, 3)`` palette) the
    legend and the palette overlay; without, the road page. (One pass over the placeholders:
    a class name is never read as one.)"""
    if colours is None:
        values = {"ROAD_HIDDEN": "", "LEGEND": "", "PALETTE": "null"}
    else:
        values = {
            "ROAD_HIDDEN": " hidden",
            "LEGEND": legend_html(names, colours),
            "PALETTE": json.dumps(np.asarray(colours, dtype=int).tolist()),
        }
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], PAGE)
