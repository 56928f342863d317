"""Serving a detector: what decoding + NMS costs next to the forward pass, and served images/s over HTTP.

  python scripts/bench_detection_serve.py [--model resnet18] [--runs 15] [--seconds 8] [--rounds 3]
      [--concurrency 1,16] [--out DIR]

The detector is configs/detection_digits.py's FCOS (96x96 input, 10 classes, its FPN, head and decoding:
pre_nms_topk 300, K = 100) on the backbone --model (default ResNet-18), random init: neither the forward pass
nor the decoding (a fixed-size top-k and NMS loop) depends on the weights. It is written as a real workdir.
1. In this process, jitted, on random uint8 images: the forward pass alone (the FCOS head outputs) and the
   task's make_predict (forward + decoding + NMS, the served function), at batch 8 and 1; medians of --runs
   calls after a warm-up; and the decoding alone, jitted, on the forward pass's outputs. Decoding's share:
   (forward+decode - forward) / forward, and decoding alone / forward.
2. `imgrec serve` of the workdir in a subprocess (batch sizes 1..16, 5 ms batching window), one 96x96 image
   per OIP v2 binary request asking for all four outputs, closed loop at each --concurrency (clients send
   their next request when the last one answered) on 127.0.0.1, for --seconds per point after 2 s of warm-up,
   --rounds times; medians of images/s and latency. The first reply is checked against make_predict.
Prints Markdown; writes results.json and detection_serve.png to --out.
"""
import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import types

import numpy as np
import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_serve  # noqa: E402  (scripts/ is not a package: its closed-loop client and helpers)

ROOT = bench_serve.ROOT
MODEL = bench_serve.MODEL
SIZES = (1, 2, 4, 8, 16)
NAMES = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


def make_workdir(path, backbone):
  """configs/detection_digits.py with `backbone`, initialised (RBG key: threefry's init compiles far longer)
  and written as a workdir; -> the restored run."""
  import jax
  import jax.numpy as jnp
  import ml_collections
  from configs import detection_digits
  from imgrec import parallel, state as train_state, workdir as wd
  cfg = detection_digits.get_config()
  cfg.model.name, cfg.model.kwargs = backbone, ml_collections.ConfigDict()
  size = cfg.data.digit_boxes_size
  info = {"source": "digit_boxes", "class_names": [str(d) for d in range(10)], "image_shape": [size, size, 3],
          "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "num_train": 1800,
          "pp_eval": f"decode|letterbox({size})"}
  built = wd.build(cfg, info, parallel.make_mesh())
  variables = jax.jit(lambda k: built.model.init(k, jnp.zeros((1, size, size, 3)), train=False))(
      jax.random.key(0, impl="rbg"))
  params = variables["params"]
  state = train_state.TrainState(step=jnp.int32(1), params=params, batch_stats=variables.get("batch_stats", {}),
                                 opt_state=built.tx.init(params), rng=jnp.zeros(2, jnp.uint32), ema_params={},
                                 ema_batch_stats={})
  wd.write(path, cfg, info, state)
  return wd.restore(path, params_only=True)


def time_decoding(run, batches, runs):
  """{batch: {"forward_ms", "predict_ms", "decode_share"}}: medians of `runs` jitted calls each."""
  import jax
  from imgrec import steps
  from imgrec.tasks import detection
  from imgrec.tasks.detection import decode
  mean, std = run.info["mean"], run.info["std"]
  m = run.model
  forward = jax.jit(lambda v, x: m.apply(v, steps.normalize(x, mean, std), train=False))
  predict = jax.jit(detection.make_predict(m, mean, std))
  h, w, _ = run.info["image_shape"]
  decode_only = jax.jit(lambda heads, _: decode.decode(heads, h, w, m.num_detections, m.pre_nms_topk, m.nms_iou,
                                                       m.score_threshold))
  out, rng = {}, np.random.default_rng(0)
  for b in batches:
    x = rng.integers(0, 256, (b, *run.info["image_shape"]), dtype=np.uint8)
    heads = forward(run.variables, x)
    times = {}
    for name, fn, args in (("forward", forward, (run.variables, x)), ("predict", predict, (run.variables, x)),
                           ("decode", decode_only, (heads, None))):
      jax.block_until_ready(fn(*args))  # compile
      jax.block_until_ready(fn(*args))
      t = []
      for _ in tqdm.trange(runs, desc=f"{name} b={b}", leave=False):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        t.append(time.perf_counter() - t0)
      times[name] = float(np.median(t)) * 1000
    out[b] = {"forward_ms": times["forward"], "predict_ms": times["predict"], "decode_ms": times["decode"],
              "decode_share": (times["predict"] - times["forward"]) / times["forward"],
              "decode_alone_share": times["decode"] / times["forward"]}
  return out


def infer_request(image):
  """(OIP v2 binary body, headers) of one image asking for the four outputs as binary."""
  head = json.dumps({"inputs": [{"name": "images", "shape": [1, *image.shape], "datatype": "UINT8",
                                 "parameters": {"binary_data_size": image.size}}],
                     "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in NAMES]}).encode()
  return head + image.tobytes(), {"inference-header-content-length": str(len(head)),
                                  "content-type": "application/octet-stream"}


def scores_of(raw, headers, k):
  """detection_scores from a binary reply (the second output, after K*4 boxes)."""
  n = int(headers["inference-header-content-length"])
  values = np.frombuffer(raw[n:], "<f4")
  return values[4 * k:5 * k]


async def measure(port, body, headers, concurrency, seconds, expected_scores, k):
  server = types.SimpleNamespace(kind="imgrec", port=port, grpc_port=None, name="imgrec")
  async with bench_serve.Client(server, "binary", body, headers, concurrency) as client:
    ok, raw, h = await client.send()
    if not ok or not np.allclose(scores_of(raw, h, k), expected_scores, atol=1e-5):
      raise SystemExit(f"wrong or failed reply: {raw[:300]!r}")
    await bench_serve.closed_loop(client, concurrency, seconds=2.0)
    return await bench_serve.closed_loop(client, concurrency, seconds=seconds)


def serve_and_measure(workdir, run, concurrencies, seconds, rounds, out):
  import jax
  from imgrec.tasks import detection
  image = np.random.default_rng(1).integers(0, 256, run.info["image_shape"], dtype=np.uint8)
  predict = jax.jit(detection.make_predict(run.model, run.info["mean"], run.info["std"]))
  expected = np.asarray(predict(run.variables, image[None])["detection_scores"])[0]
  k = run.model.num_detections
  port = bench_serve.free_port()
  log = open(os.path.join(out, "server.log"), "w")
  proc = subprocess.Popen([sys.executable, "-m", "imgrec", "serve", "--workdir", f"{MODEL}={workdir}", "--port",
                           str(port), "--batch-sizes", ",".join(map(str, SIZES)), "--max-delay-ms", "5",
                           "--no-float-inputs"], cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT),
                          stdout=log, stderr=subprocess.STDOUT)
  try:
    t0 = time.perf_counter()
    bench_serve.wait_http(f"http://127.0.0.1:{port}/v2/health/ready", proc)
    print(f"server ready in {time.perf_counter() - t0:.1f} s (restore, {len(SIZES)} compiles, warm-up)", flush=True)
    body, headers = infer_request(image)
    runs = {c: [] for c in concurrencies}
    for r in tqdm.trange(rounds, desc="rounds"):
      for c in concurrencies:
        runs[c].append(asyncio.run(measure(port, body, headers, c, seconds, expected, k)))
  finally:
    proc.terminate()
    proc.wait(60)
    log.close()
  return {c: {key: float(np.median([x[key] for x in rs])) for key in ("rps", "p50", "p99")} |
          {"errors": sum(x["errors"] for x in rs), "requests": sum(x["n"] for x in rs)} for c, rs in runs.items()}


def plot(decoding, served, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
  bs = sorted(decoding)
  w = 0.27
  for i, (key, label) in enumerate((("forward_ms", "forward"), ("predict_ms", "forward + decode + NMS"),
                                    ("decode_ms", "decode + NMS alone"))):
    a.bar(np.arange(len(bs)) + (i - 1) * w, [decoding[x][key] for x in bs], w, label=label)
  a.set_xticks(range(len(bs)), [f"batch {x}" for x in bs])
  a.set_ylabel("ms per call (median)")
  a.set_title("decoding's cost")
  a.legend()
  cs = sorted(served)
  b.bar([str(c) for c in cs], [served[c]["rps"] for c in cs])
  b.set_xlabel("concurrent clients")
  b.set_ylabel("images/s (median of rounds)")
  b.set_title("imgrec serve, OIP v2 binary, 127.0.0.1")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="resnet18", help="backbone registry name")
  p.add_argument("--runs", type=int, default=15, help="timed calls per batch size (median quoted)")
  p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per served point")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--concurrency", default="1,16")
  p.add_argument("--out", default=None, help="workdir, server log, results.json, detection_serve.png")
  args = p.parse_args()
  out = args.out or tempfile.mkdtemp(prefix="bench_detection_serve_")
  os.makedirs(out, exist_ok=True)
  workdir = os.path.join(out, "workdir")
  if os.path.exists(workdir):
    raise SystemExit(f"{workdir} exists; give a new --out")
  run = make_workdir(workdir, args.model)
  decoding = time_decoding(run, (8, 1), args.runs)
  served = serve_and_measure(workdir, run, [int(c) for c in args.concurrency.split(",")], args.seconds,
                             args.rounds, out)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"model": args.model, "image_shape": run.info["image_shape"], "decoding": decoding,
               "served": served, "load_average": os.getloadavg()}, f, indent=2)
  plot(decoding, served, os.path.join(out, "detection_serve.png"))
  print(f"\nFCOS on {args.model}, {run.info['image_shape'][0]}x{run.info['image_shape'][1]}, K = "
        f"{run.model.num_detections}, pre_nms_topk {run.model.pre_nms_topk}\n")
  print("| batch | forward ms | forward + decode + NMS ms | decode + NMS alone ms | (fwd+dec - fwd) / fwd | "
        "dec alone / fwd |\n|---|---|---|---|---|---|")
  for b, d in decoding.items():
    print(f"| {b} | {d['forward_ms']:.1f} | {d['predict_ms']:.1f} | {d['decode_ms']:.2f} | "
          f"{100 * d['decode_share']:.1f}% | {100 * d['decode_alone_share']:.1f}% |")
  print("\n| concurrency | images/s | p50 ms | p99 ms | errors / requests |\n|---|---|---|---|---|")
  for c, s in served.items():
    print(f"| {c} | {s['rps']:.1f} | {s['p50']:.1f} | {s['p99']:.1f} | {s['errors']} / {s['requests']} |")
  print(f"\nload average {os.getloadavg()}; results in {out}")


if __name__ == "__main__":
  main()
