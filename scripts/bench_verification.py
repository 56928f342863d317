"""Verification benchmarks.

  python scripts/bench_verification.py gallery [--rows 100000 --dim 128 --queries 500 --k 5]
      1:N search latency (p50, p99, one query at a time) over a gallery of random embeddings, enroll throughput
      (rows/s, in batches of --batch, no saving) and the atomic save of the whole gallery
  python scripts/bench_verification.py train [--losses arcface,softmax --steps N --scale S --config CONFIG]
      the face_glyphs recipe through the shared train step (steps.make_train_step with the task's inputs and loss),
      once per loss on the same backbone, data order and budget; the task's evaluation on the held-out pairs:
      10-fold accuracy, TAR@FAR=1e-3, EER, train images/s (after the first, compiling, log window)
Prints a markdown table and writes OUT/WHAT.json.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np
import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from imgrec import config, optim, parallel, state, steps  # noqa: E402
from imgrec.tasks import verification as task  # noqa: E402
from imgrec.tasks.verification import gallery  # noqa: E402


def load_config(path):
  """The recipe's config, checked like `imgrec train --config PATH` checks it."""
  return config.load(path)


def batches(n, batch_size, seed):
  """An endless stream of sorted index batches: shuffled epochs of `n`, cut without dropping the remainder (the
  draws the PyTorch side repeats)."""
  rng, order = np.random.default_rng(seed), np.zeros(0, int)
  while True:
    if len(order) < batch_size:
      order = np.concatenate([order, rng.permutation(n)])
    idx, order = order[:batch_size], order[batch_size:]
    yield np.sort(idx)


class Trainer:
  """The recipe's model, optimiser and jitted shared train step on the training identities of `ds`;
  `run(k)` takes k steps on the next batches and returns the last step's loss (blocked until done)."""

  def __init__(self, cfg, ds):
    self.cfg, self.train = cfg, ds.split("train")
    x = self.train.take(np.arange(len(self.train)))["image"].astype(np.float32) / 255
    self.info = {"class_names": list(ds.class_names), "mean": x.mean((0, 1, 2)).tolist(),
                 "std": x.std((0, 1, 2)).tolist()}
    self.model = task.create_model(cfg, self.info)
    tx, _ = optim.make(cfg, cfg.steps, len(self.train) // cfg.batch_size)
    self.state = state.init_state(self.model, tx, cfg.seed, ds.image_shape)
    self.step = jax.jit(steps.make_train_step(self.model, tx, self.info["mean"], self.info["std"],
                                              task.make_inputs(cfg, self.info),
                                              task.make_loss(cfg, self.info, None)[0], cfg), donate_argnums=0)
    self.draws = batches(len(self.train), cfg.batch_size, cfg.seed)

  def run(self, k):
    for _ in range(k):
      self.state, m = self.step(self.state, self.train.take(next(self.draws)))
    return float(jax.block_until_ready(m["loss"]))

  def evaluate(self, test):
    """The task's record of the held-out pairs of `test`."""
    out = steps.stream(task.make_eval_fn(self.model, self.info, self.cfg), state.variables(self.state), test, 256,
                       parallel.make_mesh())
    return task.evaluate(out, test, self.info, self.cfg)[0]


def timed_run(t, cfg, ds, desc, log_every=100):
  """(record of the held-out pairs, train images/s, final loss) of a trainer `t` (this Trainer, or the PyTorch
  one: `run(k)` steps, `evaluate(split)`) over cfg.steps steps; the speed is the median of the log windows after
  the first (compiling) one."""
  speeds, loss = [], None
  with tqdm.tqdm(total=cfg.steps, desc=desc, unit="step") as bar:
    for done in range(0, cfg.steps, log_every):
      k = min(log_every, cfg.steps - done)
      start = time.perf_counter()
      loss = t.run(k)
      speeds.append(k * cfg.batch_size / (time.perf_counter() - start))
      bar.update(k)
  return t.evaluate(ds.split("test")), float(np.median(speeds[1:] or speeds)), loss


def train_once(cfg, ds):
  """timed_run of cfg.steps steps of the shared train step."""
  return timed_run(Trainer(cfg, ds), cfg, ds, f"train {cfg.verification.loss}")


def bench_train(a):
  cfg = load_config(a.config)
  if a.steps:
    cfg.steps = a.steps
  if a.scale:
    cfg.verification.scale = a.scale
  if a.seed is not None:  # the model's init and the batch draws; the identities and held-out pairs stay
    cfg.seed = a.seed
  ds = task.open_data(cfg)
  rows = {}
  for loss in a.losses.split(","):
    c = ml_collections.ConfigDict(cfg.to_dict())
    c.verification.loss = loss
    t = time.perf_counter()
    record, speed, final_loss = train_once(c, ds)
    rows[loss] = {**record, "train_img_per_sec": speed, "final_loss": final_loss,
                  "wall_s": time.perf_counter() - t, "steps": c.steps, "scale": c.verification.scale}
  print("| loss | 10-fold accuracy | TAR@FAR=1e-3 | EER | train img/s | wall |")
  print("|---|---|---|---|---|---|")
  for loss, r in rows.items():
    print(f"| {loss} | {r['accuracy']:.4f} +- {r['accuracy_std']:.4f} | {r['tar_far1e3']:.4f} | {r['eer']:.4f} | "
          f"{r['train_img_per_sec']:.0f} | {r['wall_s']:.0f} s |")
  return rows


def bench_gallery(a):
  rng = np.random.default_rng(0)
  rows = rng.normal(size=(a.rows, a.dim)).astype(np.float32)
  ids = [f"person{i:06d}" for i in range(a.rows // a.per_identity)]
  path = os.path.join(tempfile.mkdtemp(), "gallery.npz")
  g = gallery.Gallery.open(path, a.dim)
  t = time.perf_counter()
  for start in range(0, a.rows, a.batch):
    chunk = np.arange(start, min(start + a.batch, a.rows))
    for i in np.unique(chunk // a.per_identity):
      g.enroll(ids[i], rows[chunk[chunk // a.per_identity == i]], save=False)
  enroll_s = time.perf_counter() - t
  t = time.perf_counter()
  g.save()
  save_s = time.perf_counter() - t
  queries = rng.normal(size=(a.queries, a.dim)).astype(np.float32)
  g.search(queries[:5], a.k)  # warm up
  lat = []
  for q in queries:
    t = time.perf_counter()
    g.search(q, a.k)
    lat.append(time.perf_counter() - t)
  t = time.perf_counter()
  g.search(queries, a.k)
  batched = (time.perf_counter() - t) / a.queries
  out = {"rows": a.rows, "dim": a.dim, "identities": len(ids), "k": a.k,
         "search_p50_ms": 1e3 * float(np.percentile(lat, 50)), "search_p99_ms": 1e3 * float(np.percentile(lat, 99)),
         f"search_batched_{a.queries}_ms_per_query": 1e3 * batched,
         "enroll_rows_per_s": a.rows / enroll_s, "save_s": save_s,
         "file_mb": os.path.getsize(path) / 2**20}
  print("| rows x dim | search p50 | search p99 | batched / query | enroll | save (file) |")
  print("|---|---|---|---|---|---|")
  print(f"| {a.rows} x {a.dim} | {out['search_p50_ms']:.2f} ms | {out['search_p99_ms']:.2f} ms | "
        f"{1e3 * batched:.3f} ms | {out['enroll_rows_per_s']:.0f} rows/s | {save_s:.2f} s ({out['file_mb']:.0f} MB) |")
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="what", required=True)
  g = sub.add_parser("gallery")
  g.add_argument("--rows", type=int, default=100_000)
  g.add_argument("--dim", type=int, default=128)
  g.add_argument("--per-identity", type=int, default=2)
  g.add_argument("--batch", type=int, default=64)
  g.add_argument("--queries", type=int, default=500)
  g.add_argument("--k", type=int, default=5)
  t = sub.add_parser("train")
  t.add_argument("--config", default=os.path.join(ROOT, "configs", "face_glyphs.py"))
  t.add_argument("--losses", default="arcface,softmax")
  t.add_argument("--steps", type=int, default=0)
  t.add_argument("--scale", type=float, default=0, help="the margin losses' s (0: the config's)")
  t.add_argument("--seed", type=int, default=None, help="config.seed: init and batch draws (default: the config's)")
  p.add_argument("--out", default="bench_verification")
  a = p.parse_args()
  os.makedirs(a.out, exist_ok=True)
  result = bench_gallery(a) if a.what == "gallery" else bench_train(a)
  with open(os.path.join(a.out, f"{a.what}.json"), "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
