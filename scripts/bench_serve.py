"""Serving benchmark: `imgrec serve` (HTTP JSON, HTTP binary, gRPC) vs LitServe running the same jitted
predict function, on loopback, next to the in-process compute limit of that function.

  python scripts/bench_serve.py [--model resnet18] [--rounds 3] [--seconds 8] [--concurrency 1,16,64]
      [--rss-requests 10000] [--variant NAME:key=value,...] [--baseline-root DIR] [--out DIR] [--parse-only]

A model (default ResNet-18; random init, speed does not depend on the weights) for 32x32x3 images, 10
classes, is written as a real workdir (config.json, dataset.json, an Orbax checkpoint). Every server restores
it with `imgrec.workdir.restore`, pads batches to the same sizes (1, 2, 4, ..., 64) compiled and run at
start-up and waits at most the same 5 ms for a batch to fill. Each request is one 32x32x3 uint8 image:
  imgrec json    OIP v2 `/infer`, JSON numbers          imgrec binary  OIP v2 `/infer`, binary extension
  imgrec grpc    OIP v2 gRPC ModelInfer, raw contents    litserve json  `/predict`, JSON numbers
Closed loop: `concurrency` clients (aiohttp / grpc.aio, here) each send the next request when the last one
answered, for `--seconds` per point. All servers are started first (their idle CPU use is printed, then they
are paused with SIGSTOP; LitServe polls even when idle); each round then measures every point on every
server in turn, resuming one server at a time, the order of servers
reversed every other round, so slow changes in the machine's load fall on all of them; figures are medians
over rounds. The compute
limit at concurrency c is the best images/s of the jitted function called in this process on back-to-back
batches of a compiled size <= c (no server can batch more than c requests). Then imgrec's resident memory is
sampled over --rss-requests more requests (all three paths in turn). `--variant` adds imgrec servers with
other `Options` (e.g. `nopipe:pipeline=1`), `--baseline-root` an older imgrec checkout (HTTP only), so that
changes are measured side by side. Prints Markdown; writes results.json and throughput.png to --out.
`--parse-only` times request parsing alone (this checkout and the baseline).
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
import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's imgrec, the same one the server subprocesses get
SIZES = (1, 2, 4, 8, 16, 32, 64)
MAX_DELAY_MS = 5
MODEL = "bench"


def make_workdir(path, model_name):
  """A workdir for 32x32x3 / 10 classes: config, data info and a checkpoint of the initial weights."""
  import jax.numpy as jnp
  from imgrec import config, parallel, workdir as wd
  cfg = config.defaults()
  cfg.model.name = model_name
  info = {"source": "synthetic", "class_names": [f"class_{i}" for i in range(10)], "image_shape": [32, 32, 3],
          "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "num_train": 1000}
  state = wd.initial_state(cfg, info, parallel.make_mesh())
  wd.write(path, cfg, info, state.replace(step=jnp.ones((), jnp.int32)))  # served as version 1


def load_predict(workdir):
  """(jitted predict(variables, uint8 images) -> logits, variables): the function every server runs."""
  import jax
  from imgrec.serve.served import load_workdir
  loaded = load_workdir(workdir)
  return jax.jit(loaded.fns["uint8"]), loaded.variables


def compute_limit(predict, variables, seconds=1.5):
  """Images/s of back-to-back calls at each compiled size, in this process (median call time)."""
  out = {}
  for b in SIZES:
    x = np.zeros((b, 32, 32, 3), np.uint8)
    np.asarray(predict(variables, x))
    times, t_end = [], time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 3:
      t = time.perf_counter()
      np.asarray(predict(variables, x))
      times.append(time.perf_counter() - t)
    out[b] = b / float(np.median(times))
  return out


def limit_at(limit, concurrency):
  return max(v for b, v in limit.items() if b <= concurrency)


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
      from imgrec.serve.batcher import pad_size
      self.predict_fn, self.variables = load_predict(self.workdir)
      self.pad_size = pad_size
      for b in SIZES:  # same padded sizes, compiled and run before serving
        np.asarray(self.predict_fn(self.variables, np.zeros((b, 32, 32, 3), np.uint8)))

    def decode_request(self, request):
      return np.asarray(request["data"], np.uint8).reshape(32, 32, 3)

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


# ---------------------------------------------------------------- servers

def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def parse_variant(text):
  """`NAME:key=value,key=value` -> (NAME, {key: value}) with values read as JSON (numbers, true/false)."""
  name, _, spec = text.partition(":")
  opts = {}
  for kv in filter(None, spec.split(",")):
    k, _, v = kv.partition("=")
    try:
      opts[k] = json.loads(v)
    except json.JSONDecodeError:
      opts[k] = v
  return name, opts


class Server:
  """One server under test: how to start it, which request paths it has."""

  def __init__(self, name, kind, paths, options=None, root=ROOT):
    self.name, self.kind, self.paths, self.options, self.root = name, kind, paths, options or {}, root
    self.proc = self.log = None

  def start(self, workdir, out):
    self.port, self.grpc_port = free_port(), free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=self.root)
    if self.kind == "litserve":
      cmd = [sys.executable, os.path.abspath(__file__), "--litserve-worker", workdir, str(self.port)]
    elif self.kind == "imgrec-cli":  # an older checkout: its own command line
      cmd = [sys.executable, "-m", "imgrec", "serve", "--workdir", f"{MODEL}={workdir}", "--port", str(self.port),
             "--batch-sizes", ",".join(map(str, SIZES)), "--max-delay-ms", str(MAX_DELAY_MS), "--no-float-inputs"]
    else:  # this checkout, with Options overrides (the CLI's serve() with the CLI's settings)
      opts = dict(batch_sizes=SIZES, max_delay_ms=MAX_DELAY_MS, float_inputs=False, **self.options)
      code = (f"from imgrec import compile_cache; compile_cache.enable()\n"
              f"from imgrec.serve import app\n"
              f"app.serve([{f'{MODEL}={workdir}'!r}], port={self.port}, grpc_port={self.grpc_port}, "
              f"options=app.Options(**{opts!r}))")
      cmd = [sys.executable, "-c", code]
    self.log = open(os.path.join(out, f"{self.name}.log"), "a")
    self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    wait_http(f"http://127.0.0.1:{self.port}" + ("/health" if self.kind == "litserve" else "/v2/health/ready"),
              self.proc)

  def stop(self):
    """SIGTERM to the server's own process group (LitServe forks API and inference workers), then SIGKILL."""
    os.killpg(self.proc.pid, signal.SIGTERM)
    try:
      self.proc.wait(60)
    except subprocess.TimeoutExpired:
      pass
    try:
      os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of that group is left
    except ProcessLookupError:
      pass
    self.proc.wait()
    self.log.close()


def cpu_seconds(pid):
  """User + system CPU seconds of a process and its children so far (LitServe forks workers)."""
  total, tick = 0.0, os.sysconf("SC_CLK_TCK")
  pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
                  .stdout.split()]
  for p in pids:
    try:
      with open(f"/proc/{p}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      total += (int(fields[11]) + int(fields[12])) / tick
    except FileNotFoundError:
      pass
  return total


def wait_http(url, proc, timeout=900):
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


# ---------------------------------------------------------------- requests

def requests_for(image):
  """Per path: (body bytes, HTTP headers, reply -> logits)."""
  from imgrec.serve import grpc_service
  flat = image.ravel()
  tensor = {"name": "images", "shape": [1, *image.shape], "datatype": "UINT8"}
  head = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": flat.size}}],
                     "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
  grpc_req = grpc_service.MESSAGES["ModelInfer"][0](model_name=MODEL, raw_input_contents=[flat.tobytes()])
  grpc_req.inputs.add(name="images", datatype="UINT8", shape=[1, *image.shape])
  grpc_req.outputs.add(name="logits")

  def binary_logits(raw, headers):
    n = int(headers["inference-header-content-length"])
    return np.frombuffer(raw[n:], "<f4")

  def grpc_logits(raw, headers):
    return np.frombuffer(grpc_service.MESSAGES["ModelInfer"][1].FromString(raw).raw_output_contents[0], "<f4")
  return {
      "json": (json.dumps({"inputs": [{**tensor, "data": flat.tolist()}], "outputs": [{"name": "logits"}]}).encode(),
               {"content-type": "application/json"},
               lambda raw, h: np.array(json.loads(raw)["outputs"][0]["data"], np.float32)),
      "binary": (head + flat.tobytes(), {"inference-header-content-length": str(len(head)),
                                         "content-type": "application/octet-stream"}, binary_logits),
      "grpc": (grpc_req.SerializeToString(), {}, grpc_logits),
      "litserve": (json.dumps({"data": flat.tolist()}).encode(), {"content-type": "application/json"},
                   lambda raw, h: np.array(json.loads(raw)["logits"], np.float32).ravel()),
  }


class Client:
  """Sends one request of a path and returns (ok, reply bytes, headers)."""

  def __init__(self, server, path, body, headers, concurrency):
    self.server, self.path, self.body, self.headers, self.concurrency = server, path, body, headers, concurrency

  async def __aenter__(self):
    if self.path == "grpc":
      import grpc
      self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.server.grpc_port}",
                                               options=[("grpc.max_receive_message_length", -1)])
      self.call = self.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
    else:
      import aiohttp
      self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.concurrency),
                                           timeout=aiohttp.ClientTimeout(total=120))
      route = "/predict" if self.server.kind == "litserve" else f"/v2/models/{MODEL}/infer"
      self.url = f"http://127.0.0.1:{self.server.port}{route}"
    return self

  async def __aexit__(self, *exc):
    await (self.channel.close() if self.path == "grpc" else self.session.close())

  async def send(self):
    if self.path == "grpc":
      import grpc
      try:
        return True, await self.call(self.body, timeout=120), {}
      except grpc.aio.AioRpcError:
        return False, b"", {}
    import aiohttp
    try:
      async with self.session.post(self.url, data=self.body, headers=self.headers) as r:
        raw = await r.read()
        return r.status == 200, raw, r.headers
    except aiohttp.ClientError:
      return False, b"", {}


async def closed_loop(client, concurrency, seconds=None, requests=None):
  """`concurrency` clients sending back to back, for `seconds` or until `requests` were sent -> stats."""
  latencies, errors, sent = [], 0, 0
  t_end = time.perf_counter() + (seconds or 1e9)

  async def one_client():
    nonlocal errors, sent
    while time.perf_counter() < t_end and (requests is None or sent < requests):
      sent += 1
      t = time.perf_counter()
      ok, _, _ = await client.send()
      latencies.append(time.perf_counter() - t)
      errors += not ok
  t0 = time.perf_counter()
  await asyncio.gather(*[one_client() for _ in range(concurrency)])
  wall = time.perf_counter() - t0
  lat = np.array(latencies) * 1000
  return {"rps": len(lat) / wall, "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
          "errors": errors, "n": len(lat)}


async def run_point(server, path, req, concurrency, seconds, reference):
  body, headers, decode = req
  async with Client(server, path, body, headers, concurrency) as client:
    ok, raw, h = await client.send()  # the server answers what the function computes
    if not ok or int(np.argmax(decode(raw, h))) != reference:
      raise SystemExit(f"{server.name} {path}: wrong or failed reply {raw[:200]!r}")
    await closed_loop(client, concurrency, seconds=min(2.0, seconds))  # warm: connections, first batches
    return await closed_loop(client, concurrency, seconds=seconds)


PARSE_TIMING = """
import json, sys, timeit
import numpy as np
from imgrec.serve import protocol as p
spec, limits = p.ModelSpec((32, 32, 3), tuple(map(str, range(10))), "", (("logits", "FP32", ("K",)),)), p.Limits()
image = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
tensor = {"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8"}
body = json.dumps({"inputs": [{**tensor, "data": image.ravel().tolist()}], "outputs": [{"name": "logits"}]}).encode()
head = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": 3072}}]}).encode()
logits = np.zeros((1, 10), np.float32)
req = p.parse_v2_infer(body, None, spec, limits)
def us(f, n=2000):
  return min(timeit.repeat(f, number=n, repeat=5)) / n * 1e6
print(json.dumps({"json": us(lambda: p.parse_v2_infer(body, None, spec, limits)),
                  "binary": us(lambda: p.parse_v2_infer(head + image.tobytes(), str(len(head)), spec, limits)),
                  "reply": us(lambda: p.v2_response("m", 1, req, {"logits": logits}, None))}))
"""


def parse_costs(roots):
  """Microseconds to parse one 32x32x3 OIP v2 request (JSON numbers, binary) and build its JSON reply, with
  each checkout's protocol.py (best of 5 x 2000)."""
  for name, root in roots:
    out = subprocess.run([sys.executable, "-c", PARSE_TIMING], cwd=root, env=dict(os.environ, PYTHONPATH=root),
                         capture_output=True, text=True, check=True).stdout
    t = json.loads(out)
    print(f"{name}: parse JSON {t['json']:.0f} us, parse binary {t['binary']:.0f} us, JSON reply {t['reply']:.1f} us")


# ---------------------------------------------------------------- report

def median_stats(runs):
  return {"rps": float(np.median([r["rps"] for r in runs])), "p50": float(np.median([r["p50"] for r in runs])),
          "p99": float(np.median([r["p99"] for r in runs])), "errors": sum(r["errors"] for r in runs),
          "n": sum(r["n"] for r in runs), "rounds": len(runs)}


def report(results, limits, concurrencies, out):
  """Markdown table (medians over rounds) and a PNG of throughput against concurrency."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  lim = {c: float(np.median([limit_at(l, c) for l in limits])) for c in concurrencies}
  med = {key: median_stats(runs) for key, runs in results.items()}
  lit = {c: med[k] for k in med for c in [k[2]] if k[0] == "litserve"}
  print("\n| server | path | concurrency | req/s | p50 ms | p99 ms | errors | requests | of compute limit "
        "| vs LitServe |\n|---|---|---|---|---|---|---|---|---|---|")
  for (name, path, c), m in sorted(med.items(), key=lambda kv: (kv[0][2], kv[0][0] == "litserve", kv[0][:2])):
    ratio = f"{m['rps'] / lit[c]['rps']:.2f}x" if c in lit and name != "litserve" else ""
    print(f"| {name} | {path} | {c} | {m['rps']:.1f} | {m['p50']:.1f} | {m['p99']:.1f} | {m['errors']} | "
          f"{m['n']} | {m['rps'] / lim[c]:.2f} | {ratio} |")
  print("\ncompute limit (images/s, in-process, best compiled size <= concurrency, median over rounds): " +
        ", ".join(f"c={c}: {lim[c]:.1f}" for c in concurrencies))
  per_size = {b: float(np.median([l[b] for l in limits])) for b in SIZES}
  print("compute per size (images/s): " + ", ".join(f"{b}: {v:.1f}" for b, v in per_size.items()))
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, path in sorted({k[:2] for k in med}):
    xs = [c for c in concurrencies if (name, path, c) in med]
    ax.plot(xs, [med[(name, path, c)]["rps"] for c in xs], marker="o", label=f"{name} {path}")
  ax.plot(concurrencies, [lim[c] for c in concurrencies], "k--", label="compute limit")
  ax.set(xscale="log", xlabel="concurrency", ylabel="requests/s (1 image each)", title="bench_serve (medians)")
  ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "throughput.png"), dpi=120)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"medians": {"|".join(map(str, k)): v for k, v in med.items()}, "compute_limit": lim,
               "compute_per_size": per_size, "runs": {"|".join(map(str, k)): v for k, v in results.items()}}, f,
              indent=1)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="resnet18", help="model registry name (32x32x3 input, random init)")
  p.add_argument("--rounds", type=int, default=3, help="rounds over all servers (medians are quoted)")
  p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per point (after 2 s of warm-up)")
  p.add_argument("--concurrency", default="1,16,64")
  p.add_argument("--paths", default="json,binary,grpc", help="imgrec paths to measure")
  p.add_argument("--rss-requests", type=int, default=10000, help="requests while imgrec's RSS is sampled (0: skip)")
  p.add_argument("--variant", action="append", default=[], help="NAME:key=value,... extra imgrec Options")
  p.add_argument("--baseline-root", help="an older imgrec checkout to measure beside this one (HTTP paths)")
  p.add_argument("--no-litserve", action="store_true")
  p.add_argument("--parse-only", action="store_true", help="only time request parsing (this and the baseline)")
  p.add_argument("--out", default=None, help="workdir, logs, results.json, throughput.png (default: a temp dir)")
  p.add_argument("--litserve-worker", nargs=2, metavar=("WORKDIR", "PORT"), help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.litserve_worker:
    return litserve_main(args.litserve_worker[0], int(args.litserve_worker[1]))
  if args.parse_only:
    return parse_costs([("imgrec", ROOT)] + ([("imgrec-baseline", os.path.abspath(args.baseline_root))]
                                            if args.baseline_root else []))
  concurrencies = [int(c) for c in args.concurrency.split(",")]
  out = args.out or tempfile.mkdtemp(prefix="bench_serve_")
  os.makedirs(out, exist_ok=True)
  workdir = os.path.join(out, f"{args.model}_32")
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    make_workdir(workdir, args.model)
  image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  predict, variables = load_predict(workdir)
  reference = int(np.argmax(np.asarray(predict(variables, image[None]))))
  reqs = requests_for(image)
  paths = args.paths.split(",")
  servers = [Server("imgrec", "imgrec", paths)]
  servers += [Server(f"imgrec-{n}", "imgrec", paths, o) for n, o in map(parse_variant, args.variant)]
  if args.baseline_root:
    servers.append(Server("imgrec-baseline", "imgrec-cli", [q for q in paths if q != "grpc"],
                          root=os.path.abspath(args.baseline_root)))
  if not args.no_litserve:
    servers.append(Server("litserve", "litserve", ["litserve"]))
  results, limits = {}, []
  points = args.rounds * sum(len(s.paths) for s in servers) * len(concurrencies)
  started = []
  try:
    for server in tqdm.tqdm(servers, desc="starting servers", unit="server"):
      server.start(workdir, out)
      started.append(server)
    idle = {s.name: cpu_seconds(s.proc.pid) for s in servers}
    time.sleep(5)
    idle = {s.name: (cpu_seconds(s.proc.pid) - idle[s.name]) / 5 for s in servers}
    print("idle CPU use (cores): " + ", ".join(f"{k} {v:.3f}" for k, v in idle.items()), flush=True)
    for server in servers:
      os.killpg(server.proc.pid, signal.SIGSTOP)
    bar = tqdm.tqdm(total=points, desc="bench_serve", unit="point")
    for rnd in range(args.rounds):
      limits.append(compute_limit(predict, variables))
      for c in concurrencies:  # each point on every server before the next point, order reversed each round
        for path in ("json", "binary", "grpc"):
          for server in (servers if rnd % 2 == 0 else servers[::-1]):
            sp = "litserve" if server.kind == "litserve" else path
            if sp not in server.paths or (sp == "litserve" and path != "json"):
              continue
            os.killpg(server.proc.pid, signal.SIGCONT)
            r = asyncio.run(run_point(server, sp, reqs[sp], c, args.seconds, reference))
            os.killpg(server.proc.pid, signal.SIGSTOP)  # an idle server costs the measured one nothing
            results.setdefault((server.name, path, c), []).append(r)
            bar.set_postfix_str(f"{server.name} {path} c={c}: {r['rps']:.1f} req/s")
            bar.update()
    bar.close()
  finally:
    for server in started:
      os.killpg(server.proc.pid, signal.SIGCONT)
      server.stop()
  report(results, limits, concurrencies, out)
  if args.rss_requests:
    server = servers[0]
    server.start(workdir, out)
    try:
      rss, blocks = [rss_mb(server.proc.pid)], 5
      for i in tqdm.trange(blocks, desc="RSS", unit="block"):
        path = server.paths[i % len(server.paths)]

        async def block():
          async with Client(server, path, *reqs[path][:2], 64) as client:
            return await closed_loop(client, 64, requests=args.rss_requests // blocks)
        r = asyncio.run(block())
        rss.append(rss_mb(server.proc.pid))
        print(f"  {r['n']} requests over {path}: {r['errors']} errors, {r['rps']:.1f} req/s, RSS {rss[-1]:.1f} MB")
    finally:
      server.stop()
    print(f"imgrec RSS (MB) at start and after each block of {args.rss_requests // blocks}: "
          f"{[round(x, 1) for x in rss]}")
  print(f"model {args.model}, {args.rounds} rounds x {args.seconds:.0f} s per point; out: {out}")


if __name__ == "__main__":
  main()
