"""Served zero-shot against a plain classifier on the same image tower, one server, side by side.

  python scripts/bench_zeroshot_serve.py [--labels 1000] [--image-size 96] [--width 384 --depth 6]
      [--rounds 3] [--seconds 8] [--concurrency 4] [--out DIR]

Two workdirs are written (random weights: speed does not depend on them): an image_text run of a SigLIP-style
two tower (ViT image tower, MAP pooling, patch 16, --width/--depth; a 2-block text tower) and a classification
run of the same ViT (same sizes, MAP pooling) with a head of --labels classes. One `imgrec serve` process serves
both. Each request is one uint8 image over OIP v2 HTTP (JSON header + the image as a binary tensor) asking for
"probabilities" as a binary output:
  classifier   the image alone -> probabilities [1, K] from the classification head
  zero-shot    the image + the same --labels labels (BYTES) -> probabilities [1, N] over them (sigmoid),
               their text embeddings from the server's cache after the first request (warm-up)
  image tower alone   the two tower's image alone -> image_embeds: what zero-shot costs beyond the labels
Closed loop: --concurrency clients each send the next request when the last one answered, for --seconds per
point; each round measures every point, the order reversed every other round; figures are medians over rounds. The
cache's hit and miss counts are read from /metrics after the run. Prints Markdown; writes OUT/zeroshot_serve.json
and OUT/zeroshot_serve.png.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))  # bench_serve's port and readiness helpers
from bench_serve import free_port, wait_http  # noqa: E402
from imgrec import config, parallel, plots, workdir as wd  # noqa: E402


def tower(args):
  return dict(patch=16, width=args.width, depth=args.depth, heads=args.width // 64, mlp_dim=4 * args.width,
              pool="map")


def write_runs(root, args):
  """(zero-shot workdir, classifier workdir)."""
  import jax.numpy as jnp
  size = args.image_size
  base = {"image_shape": [size, size, 3], "mean": [0.5] * 3, "std": [0.5] * 3, "num_train": 1000,
          "source": "synthetic", "pp_eval": ""}
  tt = config.defaults()
  tt.task, tt.data.source, tt.model.name = "image_text", "glyph_captions", "siglip_b16"
  tt.model.kwargs.image = tower(args)
  tt.model.kwargs.text = dict(vocab_size=64, max_len=16, width=256, depth=2, heads=4, mlp_dim=1024)
  tt.image_text.embed_dim, tt.image_text.text_len = args.width, 16
  cls = config.defaults()
  cls.model.name = "vit_s16"
  for k, v in tower(args).items():
    setattr(cls.model.kwargs, k, v)
  runs = []
  for name, cfg, names in (("zeroshot", tt, []), ("classifier", cls, [f"label {i}" for i in range(args.labels)])):
    info = {**base, "class_names": names}
    state = wd.initial_state(cfg, info, parallel.make_mesh())
    path = os.path.join(root, name)
    wd.write(path, cfg, info, state.replace(step=jnp.ones((), jnp.int32)))
    runs.append(path)
  return runs


def body(image, labels=None, output="probabilities"):
  """(OIP v2 request bytes, header length): the image as a binary tensor, labels as JSON strings."""
  inputs = [{"name": "images", "datatype": "UINT8", "shape": [1, *image.shape],
             "parameters": {"binary_data_size": image.size}}]
  if labels is not None:
    inputs.append({"name": "labels", "datatype": "BYTES", "shape": [len(labels)], "data": labels})
  head = json.dumps({"inputs": inputs, "outputs": [{"name": output, "parameters": {"binary_data": True}}]})
  return head.encode() + image.tobytes(), len(head.encode())


def load(url, payload, seconds, concurrency):
  """Requests/s over `seconds` of `concurrency` closed-loop clients sending `payload` (every reply checked)."""
  data, n = payload
  done, stop, errors = [0] * concurrency, time.perf_counter() + seconds, []

  def client(i):
    s = requests.Session()
    while time.perf_counter() < stop:
      r = s.post(url, data=data, headers={"Inference-Header-Content-Length": str(n)})
      if r.status_code != 200:
        errors.append(r.text)
        return
      done[i] += 1

  t0 = time.perf_counter()
  threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  if errors:
    raise SystemExit(f"a request failed: {errors[0]}")
  return sum(done) / (time.perf_counter() - t0)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--labels", type=int, default=1000)
  p.add_argument("--image-size", type=int, default=96)
  p.add_argument("--width", type=int, default=384)
  p.add_argument("--depth", type=int, default=6)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--seconds", type=float, default=8)
  p.add_argument("--concurrency", type=int, default=4)
  p.add_argument("--out", default="runs/bench_zeroshot_serve")
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  root = tempfile.mkdtemp(prefix="zsbench")
  zs, cl = write_runs(root, args)
  port = free_port()
  server = subprocess.Popen([sys.executable, "-m", "imgrec", "serve", "--workdir", f"zs={zs}", "--workdir",
                             f"cls={cl}", "--port", str(port), "--batch-sizes", "1,2,4,8", "--max-delay-ms", "2"],
                            stderr=subprocess.DEVNULL,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
  base = f"http://127.0.0.1:{port}"
  try:
    wait_http(base + "/v2/health/ready", server, timeout=300)
    image = np.random.default_rng(0).integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)
    labels = [f"a photo of object number {i}" for i in range(args.labels)]
    points = {"classifier": (base + "/v2/models/cls/infer", body(image)),
              "zero-shot": (base + "/v2/models/zs/infer", body(image, labels)),
              "image tower alone": (base + "/v2/models/zs/infer", body(image, output="image_embeds"))}
    for url, payload in points.values():  # warm-up: compiles the text tower's sizes, fills the cache
      load(url, payload, 2, args.concurrency)
    rates = {k: [] for k in points}
    for r in range(args.rounds):
      for name in (list(points) if r % 2 == 0 else list(points)[::-1]):
        rates[name].append(load(*points[name], args.seconds, args.concurrency))
        print(f"round {r + 1} {name}: {rates[name][-1]:.1f} req/s", flush=True)
    metrics = requests.get(base + "/metrics").text
  finally:
    server.terminate()
    server.wait(30)
  cache = {e: float(m.group(1)) for e in ("text_cache_hit", "text_cache_miss")
           for m in [re.search(rf'imgrec_task_events_total{{event="{e}",model="zs:1"}} ([0-9.e+]+)', metrics)] if m}
  med = {k: float(np.median(v)) for k, v in rates.items()}
  # per round: the two measured side by side (machine load moves both); the median of those ratios
  ratio = float(np.median(np.asarray(rates["zero-shot"]) / np.asarray(rates["classifier"])))
  result = {"args": vars(args), "rates": rates, "median": med, "ratio": ratio, "cache": cache}
  with open(os.path.join(args.out, "zeroshot_serve.json"), "w") as f:
    json.dump(result, f, indent=2)
  paired = [{k: {"rps": rates[k][i]} for k in rates} for i in range(args.rounds)]
  plots.plot_side_by_side(paired, (("rps", f"requests/s: {args.labels} cached labels vs classes"),),
                          os.path.join(args.out, "zeroshot_serve.png"), sides=tuple(rates))
  print(f"\n| served ({args.image_size}px, ViT width {args.width} depth {args.depth}, {args.labels} labels/classes,"
        f" concurrency {args.concurrency}) | requests/s (median of {args.rounds}) |\n|---|---|")
  for k, v in med.items():
    print(f"| {k} | {v:.1f} |")
  verdict = "met" if ratio >= 0.9 else "NOT met"
  print(f"\nzero-shot / classifier, median of the rounds' ratios: {ratio:.3f}x (goal >= 0.9x: {verdict}); "
        f"text cache: {cache}")


if __name__ == "__main__":
  main()
