"""The web page at `/`: pick a model, upload an image, see the top-5 classes with bars.

The page is static; it posts the file as the raw body to `/v1/models/NAME:classify?k=5`, the same
endpoint curl users call.
"""
import html

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imgrec</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
 h1 { font-size: 1.4rem; } label { display: block; margin: .6rem 0 .2rem; }
 #preview { max-width: 12rem; max-height: 12rem; image-rendering: pixelated; margin-top: 1rem; display: none; }
 #results { list-style: none; padding: 0; } #results li { margin: .35rem 0; }
 .row { display: flex; justify-content: space-between; } .bar { background: #e6e6e6; height: .7rem; }
 .fill { background: #3a7bd5; height: 100%; } #error { color: #b00020; white-space: pre-wrap; }
</style></head>
<body>
<h1>imgrec: image classification</h1>
<form id="form">
 <label for="model">Model</label><select id="model">__OPTIONS__</select>
 __KEY__
 <label for="file">Image (PNG or JPEG)</label><input id="file" type="file" accept="image/png,image/jpeg">
</form>
<img id="preview" alt="uploaded image">
<p id="status"></p><p id="error"></p>
<ol id="results"></ol>
<script>
const $ = (id) => document.getElementById(id);
async function classify(file) {
  $("error").textContent = ""; $("results").innerHTML = ""; $("status").textContent = "classifying...";
  $("preview").src = URL.createObjectURL(file); $("preview").style.display = "block";
  const headers = {"Content-Type": file.type || "application/octet-stream"};
  const key = $("key") ? $("key").value : "";
  if (key) headers["Authorization"] = "Bearer " + key;
  const model = encodeURIComponent($("model").value);
  try {
    const r = await fetch(`/v1/models/${model}:classify?k=5`, {method: "POST", body: file, headers});
    const out = await r.json();
    if (!r.ok) throw new Error(out.error || r.statusText);
    $("status").textContent = `${out.model} version ${out.version}: top ${out.predictions.length}`;
    for (const p of out.predictions) {
      const li = document.createElement("li");
      const pct = (100 * p.probability).toFixed(1);
      li.innerHTML = `<div class="row"><span class="label"></span><span class="prob">${pct}%</span></div>` +
                     `<div class="bar"><div class="fill" style="width:${pct}%"></div></div>`;
      li.querySelector(".label").textContent = p.label;
      $("results").appendChild(li);
    }
  } catch (e) { $("status").textContent = ""; $("error").textContent = "Error: " + e.message; }
}
$("file").addEventListener("change", () => { if ($("file").files.length) classify($("file").files[0]); });
</script>
</body></html>
"""

_KEY = '<label for="key">API key</label><input id="key" type="password" autocomplete="off">'


def render(model_names, needs_key):
  options = "".join(f'<option value="{html.escape(n)}">{html.escape(n)}</option>' for n in model_names)
  return _PAGE.replace("__OPTIONS__", options).replace("__KEY__", _KEY if needs_key else "")
