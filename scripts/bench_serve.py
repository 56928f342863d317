"""Serving benchmark: `imgrec serve` vs LitServe running the same jitted predict function, on loopback.

  python scripts/bench_serve.py [--model resnet18] [--requests 300,1500,3000] [--rss-requests 10000] [--out DIR]

A model (default ResNet-18; random init, speed does not depend on the weights) for 32x32x3 images, 10
classes, is written as a real workdir (config.json, dataset.json, an Orbax checkpoint). Both servers
restore it with `imgrec.train.restore`, pad batches to the same sizes (1, 2, 4, ..., 64) compiled and run
at start-up, wait at most the same 5 ms for a batch to fill, and
get the same request body: one 32x32x3 uint8 image as JSON numbers. Each server runs alone (one after
the other) while an aiohttp client here sends a bounded number of requests at concurrency 1, 16, 64.
Then imgrec's resident memory is sampled over --rss-requests more requests. Prints a Markdown table.
"""
import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's imgrec, the same one the server subprocesses get
SIZES = (1, 2, 4, 8, 16, 32, 64)
MAX_DELAY_MS = 5


def make_workdir(path, model_name):
  """A workdir for 32x32x3 / 10 classes: config, data info and a checkpoint of the initial weights."""
  import jax
  from imgrec import checkpoint, config, parallel, workdir as wd
  cfg = config.defaults()
  cfg.model.name = model_name
  info = {"source": "synthetic", "class_names": [f"class_{i}" for i in range(10)], "image_shape": [32, 32, 3],
          "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "num_train": 1000}
  os.makedirs(path, exist_ok=True)
  config.save(cfg, os.path.join(path, "config.json"))
  with open(os.path.join(path, "dataset.json"), "w") as f:
    json.dump(info, f)
  mesh = parallel.make_mesh()
  _, _, _, init, _, shardings = wd.build(cfg, info, mesh)
  state = jax.jit(init, out_shardings=shardings)()
  mngr = checkpoint.manager(path)
  checkpoint.save(mngr, 1, state)
  mngr.wait_until_finished()
  mngr.close()


# ---------------------------------------------------------------- the LitServe side (run as a subprocess)

try:
  import litserve as ls
except ImportError:  # only the comparison needs it: pip install litserve
  ls = None

if ls is not None:  # at module level: LitServe pickles the API object into its spawned worker
  class JaxAPI(ls.LitAPI):
    """The same predict function and padded sizes as `imgrec serve`, behind LitServe."""

    def __init__(self, workdir, **kw):
      super().__init__(**kw)
      self.workdir = workdir

    def setup(self, device):
      import jax
      from imgrec import state as train_state, workdir as wd
      from imgrec.serve.app import make_predict
      from imgrec.serve.batcher import pad_size
      _, info, model, state = wd.restore(self.workdir)
      self.variables = train_state.variables(state)
      predict = jax.jit(make_predict(model, info["mean"], info["std"])[0])  # the function imgrec serves
      self.shape, self.pad_size = tuple(info["image_shape"]), pad_size
      for b in SIZES:  # same padded sizes, compiled and run before serving
        np.asarray(predict(self.variables, np.zeros((b, *self.shape), np.uint8)))
      self.predict_fn = predict

    def decode_request(self, request):
      return np.asarray(request["data"], np.uint8).reshape(self.shape)

    def batch(self, inputs):
      return np.stack(inputs)

    def predict(self, x):
      n = len(x)
      size = self.pad_size(n, SIZES)
      if size != n:
        x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
      return np.asarray(self.predict_fn(self.variables, x))[:n]

    def unbatch(self, output):
      return list(output)

    def encode_response(self, output):
      return {"logits": output.tolist()}


def litserve_main(workdir, port):
  if ls is None:
    raise SystemExit("the comparison needs LitServe: pip install litserve")
  api = JaxAPI(workdir, max_batch_size=SIZES[-1], batch_timeout=MAX_DELAY_MS / 1000)
  ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60).run(
      host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")


# ---------------------------------------------------------------- load generation

async def load(url, body, n, concurrency, headers):
  import aiohttp
  latencies, errors, done = [], 0, 0
  payload = json.dumps(body).encode()
  conn = aiohttp.TCPConnector(limit=concurrency)
  async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as s:
    async def worker():
      nonlocal errors, done
      while done < n:
        done += 1
        t = time.perf_counter()
        try:
          async with s.post(url, data=payload, headers=headers) as r:
            await r.read()
            if r.status != 200:
              errors += 1
        except aiohttp.ClientError:
          errors += 1
        latencies.append(time.perf_counter() - t)
    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    wall = time.perf_counter() - t0
  lat = np.array(latencies) * 1000
  return {"rps": len(lat) / wall, "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
          "errors": errors, "n": len(lat)}


def wait_http(url, proc, timeout=600):
  import requests
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise SystemExit(f"server exited with {proc.returncode}; see its log")
    try:
      r = requests.get(url, timeout=2)
      if r.status_code == 200:
        return
      if "failed" in r.text:
        raise SystemExit(f"server: {r.text}")
    except requests.ConnectionError:
      pass
    time.sleep(0.5)
  raise SystemExit(f"{url} did not answer 200 within {timeout} s")


def rss_mb(pid):
  """Resident memory of a process and its children (LitServe and uvicorn may fork)."""
  total = 0
  pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
                  .stdout.split()]
  for p in pids:
    try:
      with open(f"/proc/{p}/status") as f:
        total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (FileNotFoundError, StopIteration):
      pass
  return total / 1024


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def stop(proc):
  """SIGTERM to the server's own process group (LitServe forks API and inference workers), then SIGKILL."""
  os.killpg(proc.pid, signal.SIGTERM)
  try:
    proc.wait(60)
  except subprocess.TimeoutExpired:
    pass
  try:
    os.killpg(proc.pid, signal.SIGKILL)  # whatever of that group is left
  except ProcessLookupError:
    pass
  proc.wait()


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--requests", default="300,1500,3000", help="requests at concurrency 1,16,64")
  p.add_argument("--model", default="resnet18", help="model registry name (32x32x3 input, random init)")
  p.add_argument("--rss-requests", type=int, default=10000, help="requests while imgrec's RSS is sampled (0: skip)")
  p.add_argument("--out", default=None, help="workdir and logs (default: a temporary directory)")
  p.add_argument("--litserve-worker", nargs=2, metavar=("WORKDIR", "PORT"), help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.litserve_worker:
    return litserve_main(args.litserve_worker[0], int(args.litserve_worker[1]))
  counts = [int(x) for x in args.requests.split(",")]
  out = args.out or tempfile.mkdtemp(prefix="bench_serve_")
  workdir = os.path.join(out, f"{args.model}_32")
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    make_workdir(workdir, args.model)
  image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  rows, rss = [], []

  # ---------------------------------------------------------------- imgrec serve
  port = free_port()
  log = open(os.path.join(out, "imgrec_serve.log"), "w")
  proc = subprocess.Popen([sys.executable, "-m", "imgrec", "serve", "--workdir", f"bench={workdir}", "--port",
                           str(port), "--batch-sizes", ",".join(map(str, SIZES)), "--max-delay-ms", str(MAX_DELAY_MS), "--no-float-inputs"],
                          cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
  t0 = time.perf_counter()
  try:
    wait_http(f"http://127.0.0.1:{port}/v2/health/ready", proc)
    print(f"imgrec serve ready in {time.perf_counter() - t0:.1f} s", flush=True)
    url = f"http://127.0.0.1:{port}/v2/models/bench/infer"
    body = {"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8",
                        "data": image.ravel().tolist()}], "outputs": [{"name": "logits"}]}
    asyncio.run(load(url, body, 64, 8, {}))  # connection set-up, first-request paths
    for c, n in zip((1, 16, 64), counts):
      r = asyncio.run(load(url, body, n, c, {}))
      rows.append(("imgrec serve (OIP v2 JSON)", c, r))
      print(rows[-1], flush=True)
    rss.append(rss_mb(proc.pid))
    step = max(1, args.rss_requests // 5)
    for _ in range(0, args.rss_requests, step) if args.rss_requests else ():
      r = asyncio.run(load(url, body, step, 64, {}))
      if r["errors"]:
        print(f"RSS phase: {r['errors']} errors", flush=True)
      rss.append(rss_mb(proc.pid))
    print("imgrec RSS (MB) every", step, "requests:", [round(x, 1) for x in rss], flush=True)
  finally:
    stop(proc)
    log.close()

  # ---------------------------------------------------------------- LitServe
  port = free_port()
  log = open(os.path.join(out, "litserve.log"), "w")
  proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--litserve-worker", workdir, str(port)],
                          cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
  t0 = time.perf_counter()
  try:
    wait_http(f"http://127.0.0.1:{port}/health", proc)
    print(f"LitServe ready in {time.perf_counter() - t0:.1f} s", flush=True)
    url = f"http://127.0.0.1:{port}/predict"
    body = {"data": image.ravel().tolist()}
    asyncio.run(load(url, body, 64, 8, {}))
    for c, n in zip((1, 16, 64), counts):
      r = asyncio.run(load(url, body, n, c, {}))
      rows.append(("LitServe (max_batch_size 64)", c, r))
      print(rows[-1], flush=True)
  finally:
    stop(proc)
    log.close()

  print("\n| server | concurrency | requests | req/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|---|")
  for name, c, r in rows:
    print(f"| {name} | {c} | {r['n']} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} |")
  ours = next(r for n, c, r in rows if c == 64 and n.startswith("imgrec"))
  theirs = next(r for n, c, r in rows if c == 64 and n.startswith("LitServe"))
  print(f"\nthroughput ratio at concurrency 64: {ours['rps'] / theirs['rps']:.2f}x")
  print(f"model {args.model}, workdir {workdir}")
  print(f"imgrec RSS over {args.rss_requests} requests (MB): {[round(x, 1) for x in rss]}")


if __name__ == "__main__":
  main()
