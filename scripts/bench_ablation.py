"""Recipe ablation on one fixed budget: each row adds one ingredient to the row above.

  python scripts/bench_ablation.py --epochs 2 --out runs/ablation [--config configs/fashion_mnist_fast.py]

Rows: no augmentation / + flip and crop / + RandAugment / + mixup and cutmix / + label smoothing / + EMA,
all with the config's model and optimiser, the same seed and the same number of steps, from scratch.
Writes OUT/ablation.md (markdown table), OUT/ablation.json and OUT/ablation.png, and prints each row.
"""
import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, for configs/

from imgrec import config, train  # noqa: E402

# (row label, config changes on top of the previous row)
ROWS = [
    ("no augmentation", {"data.augment": "", "optim.label_smoothing": 0.0, "optim.ema_decay": 0.0}),
    ("+ flip, crop(pad=2)", {"data.augment": "flip|crop(pad=2)"}),
    ("+ RandAugment(2, 5)", {"data.augment": "flip|crop(pad=2)|randaugment(2, 5)"}),
    ("+ mixup(0.2), cutmix(1.0)", {"data.augment": "flip|crop(pad=2)|randaugment(2, 5)|mixup(0.2)|cutmix(1.0)"}),
    ("+ label smoothing 0.1", {"optim.label_smoothing": 0.1}),
    ("+ EMA 0.999", {"optim.ema_decay": 0.999}),
]


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/fashion_mnist_fast.py")
  p.add_argument("--epochs", type=float, default=2.0, help="the fixed budget of every row")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="runs/ablation")
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  changes, rows = {}, []
  for label, delta in ROWS:
    changes.update(delta)
    cfg = config.load(args.config)
    config.override(cfg, [f"epochs={args.epochs}", "steps=0", f"seed={args.seed}", "eval_every=0",
                          *(f"{k}={v}" for k, v in changes.items())])
    workdir = os.path.join(args.out, "runs", str(len(rows)))
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.perf_counter()
    _, result = train.train(cfg, workdir)
    row = {"row": label, "test_accuracy": result["accuracy"], "test_loss": result["loss"],
           "wall_s": round(time.perf_counter() - start, 1), "augment": cfg.data.augment,
           "label_smoothing": cfg.optim.label_smoothing, "ema_decay": cfg.optim.ema_decay}
    rows.append(row)
    print(json.dumps(row), flush=True)
  with open(os.path.join(args.out, "ablation.json"), "w") as f:
    json.dump({"config": args.config, "epochs": args.epochs, "seed": args.seed, "rows": rows}, f, indent=1)
  lines = [f"| {args.config}, {args.epochs:g} epochs, seed {args.seed} | test acc | test NLL | wall (s) |",
           "|---|---:|---:|---:|"]
  lines += [f"| {r['row']} | {r['test_accuracy']:.4f} | {r['test_loss']:.4f} | {r['wall_s']:.0f} |" for r in rows]
  with open(os.path.join(args.out, "ablation.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  plot(rows, os.path.join(args.out, "ablation.png"))


def plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4))
  accs = [r["test_accuracy"] for r in rows]
  ax.barh(range(len(rows)), accs, color="tab:blue")
  ax.set_yticks(range(len(rows)), [r["row"] for r in rows])
  ax.invert_yaxis()
  ax.set_xlim(min(accs) - 0.01, max(accs) + 0.005)
  for i, a in enumerate(accs):
    ax.text(a, i, f" {a:.4f}", va="center", fontsize=8)
  ax.set(xlabel="test accuracy", title="Recipe ablation (each row adds to the one above)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


if __name__ == "__main__":
  main()
