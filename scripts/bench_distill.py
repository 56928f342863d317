"""Distillation benchmark: a small student trained alone vs distilled from a teacher workdir.

  python scripts/bench_distill.py --teacher W [--steps 600] [--widths 8,16] [--hidden 32]
      [--alphas 0.1,0.5] [--temperatures 1,2,4] [--seeds 0,1] [--json F] [--png F]

Every run uses the teacher's data config (so the same augmentation), batch size, the same
steps and, per seed, the same initialisation and batch order; only the loss differs. Prints
one Markdown row per setting: mean test accuracy over the seeds, then each seed's figure.
"""
import argparse
import json
import tempfile

import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, without an install

import numpy as np

from imgrec import config, train


def student(teacher_cfg, widths, hidden, steps, seed, teacher="", alpha=0.5, temperature=4.0):
  cfg = config.defaults()
  cfg.data = teacher_cfg.data
  cfg.batch_size = teacher_cfg.batch_size
  cfg.model.name = "small_cnn"
  cfg.model.kwargs.widths = widths
  cfg.model.kwargs.hidden = hidden
  cfg.steps = steps
  cfg.seed = seed
  cfg.eval_every = cfg.checkpoint_every = steps
  cfg.log_every = 100
  cfg.distill.teacher = teacher
  cfg.distill.alpha, cfg.distill.temperature = alpha, temperature
  return cfg


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--teacher", required=True)
  p.add_argument("--steps", type=int, default=600)
  p.add_argument("--widths", default="8,16")
  p.add_argument("--hidden", type=int, default=32)
  p.add_argument("--alphas", default="0.5", help="weights of the hard-label CE term, comma-separated")
  p.add_argument("--temperatures", default="4")
  p.add_argument("--seeds", default="0")
  p.add_argument("--json", help="also write the per-run accuracies here")
  p.add_argument("--png", help="also plot every run's accuracy per setting here")
  args = p.parse_args()
  t_cfg = config.load_saved(f"{args.teacher}/config.json")
  widths = tuple(int(w) for w in args.widths.split(","))
  seeds = [int(s) for s in args.seeds.split(",")]
  settings = [("alone", None, None)] + [
      (f"distilled alpha {a} T {t}", float(a), float(t))
      for t in args.temperatures.split(",") for a in args.alphas.split(",")]
  root = tempfile.mkdtemp(prefix="bench_distill_")
  results = {}
  for label, alpha, temperature in settings:
    for seed in seeds:
      teacher = "" if alpha is None else args.teacher
      cfg = student(t_cfg, widths, args.hidden, args.steps, seed, teacher, alpha or 0.5, temperature or 4.0)
      acc = train.train(cfg, f"{root}/{label.replace(' ', '_')}_s{seed}")[1]["accuracy"]
      results.setdefault(label, []).append(acc)
      print(f"{label} seed {seed}: {acc:.4f}", flush=True)
      if args.json:  # after every run, so that an interrupted sweep keeps what it measured
        with open(args.json, "w") as f:
          json.dump({"seeds": seeds, "steps": args.steps, "results": results}, f, indent=2)
  print(f"student small_cnn widths {widths} hidden {args.hidden}, {args.steps} steps x {t_cfg.batch_size} on "
        f"{t_cfg.data.source}, seeds {seeds}, teacher {args.teacher}")
  # Per seed, a setting and "alone" share the initialisation and batch order: the paired difference is
  # the comparison that cancels those; its standard error over seeds says how much to trust the mean.
  print("| student | mean test accuracy | " + " | ".join(f"seed {s}" for s in seeds) +
        " | mean - alone (paired, +- s.e.) |")
  print("|---|---|" + "---|" * len(seeds) + "---|")
  alone = np.asarray(results["alone"])
  for label, accs in results.items():
    diff = np.asarray(accs) - alone[:len(accs)]
    se = f" +- {diff.std(ddof=1) / np.sqrt(len(diff)):.4f}" if len(diff) > 1 else ""
    print(f"| {label} | {np.mean(accs):.4f} | " + " | ".join(f"{a:.4f}" for a in accs) +
          f" | {diff.mean():+.4f}{se} |")
  if args.png:
    plot(results, seeds, f"{args.steps} steps, teacher {os.path.basename(os.path.normpath(args.teacher))}", args.png)


def plot(results, seeds, title, path):
  """One row per setting: each seed's test accuracy as a dot (same colour = same seed), the mean as a bar."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  labels = list(results)
  fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.2))
  for i, label in enumerate(labels):
    ax.barh(i, np.mean(results[label]), color="tab:blue", alpha=0.3)
    for j, acc in enumerate(results[label]):
      ax.plot(acc, i, "o", color=f"C{j % 10}", ms=4, label=f"seed {seeds[j]}" if i == 0 else None)
  ax.axvline(np.mean(results["alone"]), color="grey", ls="--", lw=1)
  everything = [a for accs in results.values() for a in accs]
  ax.set_xlim(min(everything) - 0.005, max(everything) + 0.005)
  ax.set_yticks(range(len(labels)), labels)
  ax.invert_yaxis()
  ax.set(xlabel="test accuracy (bar: mean over seeds; dashed: student alone)", title=f"Distillation: {title}")
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


if __name__ == "__main__":
  main()
