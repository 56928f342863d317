"""The web page at `/`: pick a model, upload an image, see what the model's task answers.

The page is static and knows no task: it posts the file as the raw body to `/v1/models/NAME:predict`, the
same upload endpoint curl users call, and shows what the reply holds: "predictions" (a classifier's top
classes) as bars, "detections" (boxes in the uploaded image's own pixels) drawn on the image with their labels.
"""
import html

BOX_COLOR = "#ff00ff"  # one colour for every box: it must stand out on any photo (the browser test reads it)

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
</style></head>
<body>
<h1>imgrec</h1>
<form id="form">
 <label for="model">Model</label><select id="model">__OPTIONS__</select>
 __KEY__
 <label for="file">Image (PNG or JPEG)</label><input id="file" type="file" accept="image/png,image/jpeg">
</form>
<img id="preview" alt="uploaded image"><canvas id="canvas"></canvas>
<p id="status"></p><p id="error"></p>
<ol id="results"></ol>
<script>
const $ = (id) => document.getElementById(id);
const BOX = "__BOX__";

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

async function upload(file) {
  $("error").textContent = ""; $("results").innerHTML = ""; $("status").textContent = "working...";
  $("canvas").style.display = "none"; $("preview").style.display = "none";
  const url = URL.createObjectURL(file);
  const headers = {"Content-Type": file.type || "application/octet-stream"};
  const key = $("key") ? $("key").value : "";
  if (key) headers["Authorization"] = "Bearer " + key;
  const model = encodeURIComponent($("model").value);
  try {
    const r = await fetch(`/v1/models/${model}:predict`, {method: "POST", body: file, headers});
    const out = await r.json();
    if (!r.ok) throw new Error(out.error || r.statusText);
    if (out.detections) {
      $("status").textContent = `${out.model} version ${out.version}: ${out.detections.length} detections`;
      for (const d of out.detections) row(d.label, d.score.toFixed(2), null);
      draw(url, out);
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
      "__BOX__", BOX_COLOR)
