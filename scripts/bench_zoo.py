"""Trains every model family on Fashion-MNIST for the same fixed budget and tabulates the result.

  python scripts/bench_zoo.py --steps 200 --batch-size 64 --out runs/bench_zoo [--families cnn,resnet]

Each family runs `configs/fashion_mnist_<family>.py:quick=True` (small widths) for --steps steps
from scratch, then evaluates on the full test set. Writes OUT/zoo.md (markdown table: params,
test accuracy, training img/s, wall time), OUT/zoo.json and OUT/zoo.png.
"""
import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, for configs/

import numpy as np  # noqa: E402

from imgrec import config, train  # noqa: E402

FAMILIES = ("cnn", "vgg", "inception", "resnet", "densenet", "mobilenet", "efficientnet", "vit", "rnn")


def run_family(family, steps, batch_size, workdir):
  cfg = config.load(f"configs/fashion_mnist_{family}.py:quick=True,steps={steps}")
  cfg.batch_size = batch_size
  shutil.rmtree(workdir, ignore_errors=True)  # always from scratch
  start = time.perf_counter()
  state, result = train.train(cfg, workdir)
  wall = time.perf_counter() - start
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    speeds = [r["img_per_sec"] for r in map(json.loads, f) if r["split"] == "train"]
  return {"family": family, "model": cfg.model.name, "kwargs": cfg.model.kwargs.to_dict(),
          "params": sum(int(np.prod(p.shape)) for p in __import__("jax").tree.leaves(state.params)),
          "accuracy": result["accuracy"], "img_per_sec": float(np.median(speeds[1:] or speeds)),  # first includes compile
          "wall_s": wall, "steps": steps, "batch_size": batch_size}


def markdown(rows):
  lines = ["| family | model (quick kwargs) | params | test acc | train img/s | wall (s) |",
           "|---|---|---:|---:|---:|---:|"]
  for r in rows:
    kw = ", ".join(f"{k}={v}" for k, v in r["kwargs"].items())
    lines.append(f"| {r['family']} | {r['model']} ({kw}) | {r['params'] / 1e3:.1f}k | {r['accuracy']:.4f} | "
                 f"{r['img_per_sec']:.0f} | {r['wall_s']:.0f} |")
  return "\n".join(lines)


def plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 5))
  for r in rows:
    ax.scatter(r["img_per_sec"], r["accuracy"], s=20 + 200 * r["params"] / max(x["params"] for x in rows))
    ax.annotate(r["model"], (r["img_per_sec"], r["accuracy"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
  ax.set(xscale="log", xlabel="training images / s (log)", ylabel="test accuracy",
         title=f"Fashion-MNIST, {rows[0]['steps']} steps x batch {rows[0]['batch_size']} (marker size ~ params)")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--families", default=",".join(FAMILIES))
  p.add_argument("--out", default="runs/bench_zoo")
  args = p.parse_args()
  families = [f for f in args.families.split(",") if f]
  unknown = set(families) - set(FAMILIES)
  if unknown:
    p.error(f"unknown families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
  os.makedirs(args.out, exist_ok=True)
  rows = []
  for family in families:
    rows.append(run_family(family, args.steps, args.batch_size, os.path.join(args.out, "runs", family)))
    with open(os.path.join(args.out, "zoo.json"), "w") as f:  # partial results survive an interrupted run
      json.dump(rows, f, indent=2)
    print(markdown(rows[-1:]).splitlines()[-1], flush=True)
  with open(os.path.join(args.out, "zoo.md"), "w") as f:
    f.write(markdown(rows) + "\n")
  plot(rows, os.path.join(args.out, "zoo.png"))
  print(markdown(rows))
  print(f"wrote {args.out}/zoo.md, zoo.json, zoo.png")


if __name__ == "__main__":
  main()
