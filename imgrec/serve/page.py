"""The web page at `/`: pick a model, upload an image, see what the model's task answers.

The page is static and knows no task: it posts the file as the raw body to `/v1/models/NAME:predict`, the
same upload endpoint curl users call, and shows what the reply holds: "predictions" (a classifier's top
classes) as bars, "detections" (boxes in the uploaded image's own pixels) drawn on the image with their labels,
"mask_png" (a class map: a base64 PNG of the upload's size, mode "L" or "P", one class index per pixel, 255 =
none; "classes" names the indices, "counts" gives {label: pixels}) as a coloured overlay with a legend.
"""
import html

BOX_COLOR = "#ff00ff"  # one colour for every box: it must stand out on any photo (the browser test reads it)
MASK_ALPHA = 0.55  # how much of a class's colour covers the photo in a mask overlay

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imgrec</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
 h1 { font-size: 1.4rem; } label { display: block; margin: .6rem 0 .2rem; }
 #preview { max-width: 12rem; max-height: 12rem; image-rendering: pixelated; margin-top: 1rem; display: none; }
 #canvas { max-width: 100%; margin-top: 1rem; display: none; }
 #results { list-style: none; padding: 0; } #results li { margin: .35rem 0; }
 .row { display: flex; justify-content: space-between; } .bar { background: #e6e6e6; height: .7rem; }
 .fill { background: #3a7bd5; height: 100%; } #error { color: #b00020; white-space: pre-wrap; }
 .swatch { display: inline-block; width: .9rem; height: .9rem; margin-right: .4rem; vertical-align: middle; }
</style></head>
<body>
<h1>imgrec</h1>
<form id="form">
 <label for="model">Model</label><select id="model">__OPTIONS__</select>
 __KEY__
 <label for="labels">Labels, comma-separated (open-vocabulary models: what to tell apart)</label>
 <input id="labels" type="text" placeholder="a cat, a dog, a car">
 <label for="file">Image (PNG or JPEG)</label><input id="file" type="file" accept="image/png,image/jpeg">
</form>
<img id="preview" alt="uploaded image"><canvas id="canvas"></canvas>
<p id="status"></p><p id="error"></p>
<ol id="results"></ol>
<script>
const $ = (id) => document.getElementById(id);
const BOX = "__BOX__", ALPHA = __ALPHA__;

function row(label, value, pct) {
  const li = document.createElement("li");
  li.innerHTML = `<div class="row"><span class="label"></span><span class="prob"></span></div>` +
                 (pct === null ? "" : `<div class="bar"><div class="fill" style="width:${pct}%"></div></div>`);
  li.querySelector(".label").textContent = label;
  li.querySelector(".prob").textContent = value;
  $("results").appendChild(li);
}

// Boxes are in the uploaded image's own pixels: the canvas has its size, CSS scales the whole.
function draw(url, out) {
  const img = new Image();
  img.onload = () => {
    const c = $("canvas"), g = c.getContext("2d");
    c.width = out.width; c.height = out.height;
    g.drawImage(img, 0, 0, out.width, out.height);
    const line = Math.max(2, Math.round(Math.max(out.width, out.height) / 300));
    g.lineWidth = line; g.strokeStyle = BOX; g.font = `${6 * line + 2}px sans-serif`; g.textBaseline = "bottom";
    for (const d of [...out.detections].reverse()) {  // the best drawn last, on top
      const [x0, y0, x1, y1] = d.box, text = `${d.label} ${d.score.toFixed(2)}`;
      g.strokeRect(x0, y0, x1 - x0, y1 - y0);
      const w = g.measureText(text).width + 2 * line, h = 6 * line + 4, top = Math.max(y0 - h, 0);
      g.fillStyle = BOX; g.fillRect(x0, top, w, h);
      g.fillStyle = "#fff"; g.fillText(text, x0 + line, top + h);
    }
    c.style.display = "block"; c.dataset.drawn = String(out.detections.length);
  };
  img.src = url;
}

// A class's overlay colour: hues a golden angle apart, so neighbouring indices differ.
function classColor(i) {
  const h = (i * 137.508) % 360 / 60, c = 0.8, x = c * (1 - Math.abs(h % 2 - 1)), m = 0.1;
  const [r, g, b] = [[c, x, 0], [x, c, 0], [0, c, x], [0, x, c], [x, 0, c], [c, 0, x]][Math.floor(h) % 6];
  return [r, g, b].map((v) => Math.round(255 * (v + m)));
}

// A PNG's palette (mode "P"): [[r, g, b], ...] from its PLTE chunk; null for a greyscale ("L") PNG.
function paletteOf(bytes) {
  for (let i = 8; i + 8 <= bytes.length;) {
    const n = ((bytes[i] << 24) | (bytes[i + 1] << 16) | (bytes[i + 2] << 8) | bytes[i + 3]) >>> 0;
    const type = String.fromCharCode(...bytes.slice(i + 4, i + 8));
    if (type === "PLTE") {
      const p = [];
      for (let j = 0; j + 3 <= n; j += 3) p.push(bytes.slice(i + 8 + j, i + 11 + j));
      return p;
    }
    if (type === "IDAT") return null;
    i += 12 + n;
  }
  return null;
}

// The class map drawn over the upload: each pixel's class colour at ALPHA, none (255) left as it is. The
// browser decodes the PNG to colours, so a palette PNG's indices come back through its palette.
function overlay(url, out) {
  const img = new Image(), mask = new Image();
  let waiting = 2;
  const done = () => {
    if (--waiting) return;
    const c = $("canvas"), g = c.getContext("2d"), w = out.width, h = out.height;
    c.width = w; c.height = h;
    const m = document.createElement("canvas"), mg = m.getContext("2d");
    m.width = w; m.height = h; mg.drawImage(mask, 0, 0, w, h);
    const ids = mg.getImageData(0, 0, w, h).data;
    const bytes = Uint8Array.from(atob(out.mask_png), (ch) => ch.charCodeAt(0));
    const pal = paletteOf(bytes), index = new Map();
    if (pal) pal.forEach((p, i) => { const k = p.join(); if (!index.has(k)) index.set(k, i); });
    g.drawImage(img, 0, 0, w, h);
    const photo = g.getImageData(0, 0, w, h), px = photo.data, colors = out.classes.map((_, i) => classColor(i));
    for (let i = 0; i < ids.length; i += 4) {
      const id = pal ? (ids[i + 3] ? index.get(`${ids[i]},${ids[i + 1]},${ids[i + 2]}`) : 255) : ids[i];
      if (id === undefined || id >= colors.length) continue;  // 255: no class
      for (let j = 0; j < 3; j++) px[i + j] = Math.round((1 - ALPHA) * px[i + j] + ALPHA * colors[id][j]);
    }
    g.putImageData(photo, 0, 0);
    c.style.display = "block"; c.dataset.drawn = String(Object.keys(out.counts).length);
  };
  img.onload = mask.onload = done;
  img.src = url; mask.src = "data:image/png;base64," + out.mask_png;
}

function legend(out) {
  const total = out.width * out.height;
  for (const [label, n] of Object.entries(out.counts).sort((a, b) => b[1] - a[1])) {
    row(label, `${(100 * n / total).toFixed(1)}%`, null);
    const sw = document.createElement("span"), [r, g, b] = classColor(out.classes.indexOf(label));
    sw.className = "swatch"; sw.style.background = `rgb(${r},${g},${b})`;
    $("results").lastChild.querySelector(".label").prepend(sw);
  }
}

async function upload(file) {
  $("error").textContent = ""; $("results").innerHTML = ""; $("status").textContent = "working...";
  $("canvas").style.display = "none"; $("preview").style.display = "none";
  const url = URL.createObjectURL(file);
  const headers = {"Content-Type": file.type || "application/octet-stream"};
  const key = $("key") ? $("key").value : "";
  if (key) headers["Authorization"] = "Bearer " + key;
  const model = encodeURIComponent($("model").value);
  try {
    const labels = $("labels").value.split(",").map((s) => s.trim()).filter((s) => s);
    const query = labels.length ? "?" + labels.map((s) => "labels=" + encodeURIComponent(s)).join("&") : "";
    const r = await fetch(`/v1/models/${model}:predict${query}`, {method: "POST", body: file, headers});
    const out = await r.json();
    if (!r.ok) throw new Error(out.error || r.statusText);
    if (out.mask_png) {
      $("status").textContent = `${out.model} version ${out.version}: ${Object.keys(out.counts).length} classes`;
      legend(out);
      overlay(url, out);
    } else if (out.detections) {
      $("status").textContent = `${out.model} version ${out.version}: ${out.detections.length} detections`;
      for (const d of out.detections) row(d.label, d.score.toFixed(2), null);
      draw(url, out);
    } else if (!out.predictions) {
      $("preview").src = url; $("preview").style.display = "block";
      $("status").textContent = `${out.model} version ${out.version}: an image embedding of ${out.dim} numbers` +
        " (give labels to score the image against them)";
    } else {
      $("preview").src = url; $("preview").style.display = "block";
      $("status").textContent = `${out.model} version ${out.version}: top ${out.predictions.length}`;
      for (const p of out.predictions) {
        const pct = (100 * p.probability).toFixed(1);
        row(p.label, `${pct}%`, pct);
      }
    }
  } catch (e) { $("status").textContent = ""; $("error").textContent = "Error: " + e.message; }
}
$("file").addEventListener("change", () => { if ($("file").files.length) upload($("file").files[0]); });
</script>
</body></html>
"""

_KEY = '<label for="key">API key</label><input id="key" type="password" autocomplete="off">'


def render(model_names, needs_key):
  options = "".join(f'<option value="{html.escape(n)}">{html.escape(n)}</option>' for n in model_names)
  return _PAGE.replace("__OPTIONS__", options).replace("__KEY__", _KEY if needs_key else "").replace(
      "__BOX__", BOX_COLOR).replace("__ALPHA__", str(MASK_ALPHA))
