"""Model repository benchmark: load times, a model's latency while another loads, memory over load/unload
cycles, reloads under load, and round-robin requests over more models than a memory budget holds.

  python scripts/bench_repository.py [--seconds 10] [--rate 20] [--cycles 50] [--reloads 20] [--rr-requests 32]
      [--skip-vit] [--out DIR]

Models (random weights: speed and memory do not depend on them), written as real folders:
  resnet18   a ResNet-18 run for digits-size images (8x8x1, 10 classes): config.json, dataset.json, a checkpoint
             (served with --batch-sizes 1,8, uint8 inputs only)
  vit_s16    a ViT-S/16 (timm's vit_small_patch16_224, 1000 classes) saved as safetensors, then `imgrec import`ed
Measurements (each server is the real `imgrec serve --model-repository`, a subprocess on 127.0.0.1):
  1. load time of each model in a fresh process, with an empty compile cache (cold) and again with the cache
     the first load filled (warm): restore + compile every padded size + one run of each;
  2. p50/p99 latency of model A (one image per request, a fixed rate, open loop) alone, then while model B
     is loaded and unloaded in a loop through the repository API;
  3. the server's resident memory after the first and after the last of --cycles load/unload cycles of B;
  4. requests served and failed while A is reloaded --reloads times (a file in its version folder changes,
     then POST .../load) under a closed-loop load of 4 clients;
  5. round-robin requests over 8 models (links to the same run) with --memory-budget for 2 of them:
     throughput, p50/p99 and the evictions counted by /metrics.
Prints Markdown and writes results.json to --out.
"""
import argparse
import concurrent.futures
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "scripts"))  # bench_import's timm-layout writer
SIZES = "1,8"


def make_resnet_run(path):
  import jax.numpy as jnp
  from imgrec import config, parallel, workdir as wd
  cfg = config.defaults()
  cfg.model.name = "resnet18"
  info = {"source": "synthetic", "class_names": [str(i) for i in range(10)], "image_shape": [8, 8, 1],
          "mean": [0.5], "std": [0.25], "num_train": 1000}
  state = wd.initial_state(cfg, info, parallel.make_mesh())
  wd.write(path, cfg, info, state.replace(step=jnp.ones((), jnp.int32)))


def make_vit_import(path, tmp):
  """A ViT-S/16 in timm's layout with its pretrained_cfg (bench_import.py writes the weights), `imgrec import`ed."""
  from bench_import import vit_b16_timm
  from imgrec import checkpoint_import
  folder = os.path.join(tmp, "vit_s16_timm")
  os.makedirs(folder)
  vit_b16_timm(os.path.join(folder, "model.safetensors"), d=384, m=1536)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump({"architecture": "vit_small_patch16_224", "num_classes": 1000,
               "pretrained_cfg": {"input_size": [3, 224, 224], "mean": [0.5] * 3, "std": [0.5] * 3,
                                  "crop_pct": 0.9}}, f)
  checkpoint_import.import_checkpoint(folder, path)


LOAD_SNIPPET = """
import sys, time
sys.path.insert(0, {root!r})
from imgrec import compile_cache
compile_cache.enable()
from imgrec.serve import gate, served
opts = served.Options(batch_sizes=({sizes}), float_inputs=False)
t0 = time.perf_counter()
m = served.ServedModel("m", 1, {path!r})
m.load(opts, gate.make_metrics()[1])
print("LOAD", time.perf_counter() - t0, m.nbytes)
"""


def load_time(path, cache):
  env = dict(os.environ, IMGREC_COMPILE_CACHE=cache, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", ""))
  code = LOAD_SNIPPET.format(root=ROOT, sizes=SIZES, path=path)
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1800)
  line = next((x for x in out.stdout.splitlines() if x.startswith("LOAD")), None)
  if line is None:
    raise RuntimeError(out.stderr[-3000:])
  _, seconds, nbytes = line.split()
  return float(seconds), int(nbytes)


# ---------------------------------------------------------------- a server and its clients

def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Server:
  def __init__(self, repo, cache, *extra):
    import requests
    self.port = free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    env = dict(os.environ, PYTHONPATH=ROOT, IMGREC_COMPILE_CACHE=cache)  # its own cache, filled by measurement 1
    self.proc = subprocess.Popen([sys.executable, "-m", "imgrec", "serve", "--model-repository", repo,
                                  "--port", str(self.port), "--batch-sizes", SIZES, "--no-float-inputs",
                                  "--model-control-mode", "explicit", *extra], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
      try:
        if requests.get(self.url + "/v2/health/ready", timeout=2).status_code == 200:
          return
      except requests.ConnectionError:
        pass
      if self.proc.poll() is not None:
        raise RuntimeError("server exited")
      time.sleep(0.2)
    raise RuntimeError("server not ready")

  def rss_mb(self):
    with open(f"/proc/{self.proc.pid}/status") as f:
      return next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) / 1024

  def post(self, path, **kw):
    import requests
    r = requests.post(self.url + path, timeout=600, **kw)
    if r.status_code != 200:
      raise RuntimeError(f"{path}: {r.status_code} {r.text}")
    return r

  def stop(self):
    self.proc.terminate()
    self.proc.wait(60)


def body(image):
  return json.dumps({"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, *image.shape],
                                 "data": image.ravel().tolist()}]})


def fixed_rate(url, model, image, rate, seconds):
  """Open loop: a request every 1/rate s, each on its own worker; -> (latencies in s, failures)."""
  import requests
  payload, latencies, failures = body(image), [], [0]
  lock, local = threading.Lock(), threading.local()

  def one():
    s = getattr(local, "s", None) or requests.Session()
    local.s = s
    t0 = time.perf_counter()
    r = s.post(f"{url}/v2/models/{model}/infer", data=payload, timeout=60)
    dt = time.perf_counter() - t0
    with lock:
      if r.status_code == 200:
        latencies.append(dt)
      else:
        failures[0] += 1
  with concurrent.futures.ThreadPoolExecutor(32) as pool:
    t0, n = time.perf_counter(), int(rate * seconds)
    for i in range(n):
      time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
      pool.submit(one)
  return np.array(latencies), failures[0]


def closed_loop(url, model, image, clients, stop):
  import requests
  payload, counts, lock = body(image), {"ok": 0, "failed": 0}, threading.Lock()

  def client():
    with requests.Session() as s:
      while not stop.is_set():
        r = s.post(f"{url}/v2/models/{model}/infer", data=payload, timeout=60)
        with lock:
          counts["ok" if r.status_code == 200 else "failed"] += 1
  threads = [threading.Thread(target=client) for _ in range(clients)]
  for t in threads:
    t.start()
  return threads, counts


def pct(x, q):
  return float(np.percentile(x, q) * 1000) if len(x) else float("nan")


# ---------------------------------------------------------------- main

def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--seconds", type=float, default=10)
  p.add_argument("--rate", type=float, default=5, help="requests/s to model A in measurement 2")
  p.add_argument("--cycles", type=int, default=50)
  p.add_argument("--reloads", type=int, default=20)
  p.add_argument("--rr-requests", type=int, default=32)
  p.add_argument("--skip-vit", action="store_true")
  p.add_argument("--out", default="bench_repository")
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix="bench_repository_")
  repo = os.path.join(tmp, "repo")
  run = os.path.join(tmp, "resnet18_run")
  make_resnet_run(run)
  for name in ("a", "b"):
    os.makedirs(os.path.join(repo, name))
  import shutil
  shutil.copytree(run, os.path.join(repo, "a", "1"))  # a copy: its reloads touch a file in it
  os.symlink(run, os.path.join(repo, "b", "1"))
  results = {}

  # 1. load times, cold and warm
  models = {"resnet18": run}
  if not args.skip_vit:
    models["vit_s16"] = os.path.join(tmp, "vit_import")
    make_vit_import(models["vit_s16"], tmp)
  results["load"] = {}
  for label, path in models.items():
    cache = os.path.join(tmp, "cache-" + label)
    cold, nbytes = load_time(path, cache)
    warm, _ = load_time(path, cache)
    results["load"][label] = {"cold_s": cold, "warm_s": warm, "bytes": nbytes}
    print(f"load {label}: cold {cold:.2f} s, warm {warm:.2f} s, {nbytes / 1e6:.1f} MB", flush=True)

  image = np.random.default_rng(0).integers(0, 255, (8, 8, 1), dtype=np.uint8)
  cache = os.path.join(tmp, "cache-resnet18")
  server = Server(repo, cache, "--load-model", "a")
  try:
    # 2. A's latency alone, then while B loads and unloads
    fixed_rate(server.url, "a", image, args.rate, 2)  # warm-up
    alone, fail_alone = fixed_rate(server.url, "a", image, args.rate, args.seconds)
    stop, cycles = threading.Event(), [0]

    def churn():
      while not stop.is_set():
        server.post("/v2/repository/models/b/load")
        server.post("/v2/repository/models/b/unload")
        cycles[0] += 1
    t = threading.Thread(target=churn)
    t.start()
    busy, fail_busy = fixed_rate(server.url, "a", image, args.rate, args.seconds)
    stop.set()
    t.join()
    results["latency"] = {"rate": args.rate, "alone_p50_ms": pct(alone, 50), "alone_p99_ms": pct(alone, 99),
                          "churn_p50_ms": pct(busy, 50), "churn_p99_ms": pct(busy, 99),
                          "p99_ratio": pct(busy, 99) / pct(alone, 99), "b_cycles": cycles[0],
                          "failed": fail_alone + fail_busy, "requests": len(alone) + len(busy)}
    print("latency", results["latency"], flush=True)

    # 3. memory over load/unload cycles of B
    rss = []
    for i in range(args.cycles):
      server.post("/v2/repository/models/b/load")
      server.post("/v2/repository/models/b/unload")
      rss.append(server.rss_mb())
    results["memory"] = {"cycles": args.cycles, "after_first_mb": rss[0], "after_last_mb": rss[-1],
                         "change": rss[-1] / rss[0] - 1, "max_mb": max(rss)}
    print("memory", results["memory"], flush=True)

    # 4. reloads under load
    stop = threading.Event()
    threads, counts = closed_loop(server.url, "a", image, 4, stop)
    t0 = time.perf_counter()
    for i in range(args.reloads):
      with open(os.path.join(repo, "a", "1", "reload-marker"), "w") as f:
        f.write(str(i))
      server.post("/v2/repository/models/a/load")
    elapsed = time.perf_counter() - t0
    stop.set()
    for th in threads:
      th.join()
    results["reloads"] = {"reloads": args.reloads, "seconds": elapsed, **counts}
    print("reloads", results["reloads"], flush=True)
  finally:
    server.stop()

  # 5. round-robin over 8 models with a budget for 2
  rr = os.path.join(tmp, "rr")
  for i in range(8):
    os.makedirs(os.path.join(rr, f"m{i}"))
    os.symlink(run, os.path.join(rr, f"m{i}", "1"))
  one = results["load"]["resnet18"]["bytes"]
  server = Server(rr, cache, "--memory-budget", str(int(2.5 * one)))
  try:
    import requests
    payload, lat, failed = body(image), [], 0
    t0 = time.perf_counter()
    with requests.Session() as s:
      for i in range(args.rr_requests):
        t1 = time.perf_counter()
        r = s.post(f"{server.url}/v2/models/m{i % 8}/infer", data=payload, timeout=600)
        lat.append(time.perf_counter() - t1)
        failed += r.status_code != 200
    total = time.perf_counter() - t0
    metrics = requests.get(server.url + "/metrics").text
    evictions = sum(float(x) for x in re.findall(r"^imgrec_model_evictions_total\{[^}]*\} (\S+)", metrics, re.M))
    results["round_robin"] = {"models": 8, "budget_models": 2.5, "requests": args.rr_requests, "failed": failed,
                              "throughput_rps": args.rr_requests / total, "p50_ms": pct(np.array(lat), 50),
                              "p99_ms": pct(np.array(lat), 99), "evictions": evictions}
    print("round robin", results["round_robin"], flush=True)
  finally:
    server.stop()

  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  print("\n| measurement | result |\n|---|---|")
  for label, r in results["load"].items():
    print(f"| load {label} | cold {r['cold_s']:.2f} s, warm (compile cache) {r['warm_s']:.2f} s |")
  lt = results["latency"]
  print(f"| A p99 at {lt['rate']:.0f} req/s alone / while B loads+unloads ({lt['b_cycles']} cycles) | "
        f"{lt['alone_p99_ms']:.1f} / {lt['churn_p99_ms']:.1f} ms ({lt['p99_ratio']:.2f}x; goal <= 1.5x) |")
  m = results["memory"]
  print(f"| RSS after 1 / {m['cycles']} load-unload cycles | {m['after_first_mb']:.0f} / {m['after_last_mb']:.0f} MB "
        f"({m['change'] * 100:+.1f}%; goal within 5%) |")
  rl = results["reloads"]
  print(f"| {rl['reloads']} reloads under load | {rl['ok']} served, {rl['failed']} failed (goal 0) |")
  rr_ = results["round_robin"]
  print(f"| round-robin over 8 models, budget for 2 | {rr_['throughput_rps']:.2f} req/s, p99 {rr_['p99_ms']:.0f} ms, "
        f"{rr_['evictions']:.0f} evictions, {rr_['failed']} failed |")


if __name__ == "__main__":
  main()
