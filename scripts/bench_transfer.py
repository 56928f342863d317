"""Transfer benchmark: pretrain on digits 0-4, fine-tune on 5-9 with K examples per class,
against training the same model from scratch on the same K per class.

  python scripts/bench_transfer.py [--k 20] [--seeds 0,1,2] [--model small_cnn]

Prints one line per seed and the mean; the test set is all of digits 5-9's held-out split.
"""
import argparse
import os
import tempfile

import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, without an install

import numpy as np

from imgrec import config, train


def base_config(model, steps, seed):
  cfg = config.defaults()
  cfg.model.name = model
  if model == "small_cnn":
    cfg.model.kwargs.widths = (16, 32)
    cfg.model.kwargs.hidden = 64
  cfg.seed = seed
  cfg.steps = steps
  cfg.log_every = 10
  cfg.data.prefetch = 0
  return cfg


def pretrain(model, workdir, steps, seed=0):
  cfg = base_config(model, steps, seed)
  cfg.batch_size = 32
  cfg.data.classes = (0, 1, 2, 3, 4)
  cfg.eval_every = cfg.checkpoint_every = steps
  return train.train(cfg, workdir)[1]["accuracy"]


def finetune(model, workdir, k, steps, seed, init_from=""):
  cfg = base_config(model, steps, seed)
  cfg.batch_size = 20
  cfg.data.classes = (5, 6, 7, 8, 9)
  cfg.data.train_per_class = k
  cfg.optim.warmup_epochs = 0.0
  cfg.eval_every = cfg.checkpoint_every = steps
  cfg.transfer.init_from = init_from
  return train.train(cfg, workdir)[1]["accuracy"]


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--k", type=int, default=20)
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--model", default="small_cnn")
  p.add_argument("--pretrain_steps", type=int, default=300)
  p.add_argument("--steps", type=int, default=60)
  args = p.parse_args()
  root = tempfile.mkdtemp(prefix="bench_transfer_")
  pre = os.path.join(root, "pre")
  acc_pre = pretrain(args.model, pre, args.pretrain_steps)
  rows = []
  for seed in map(int, args.seeds.split(",")):
    ft = finetune(args.model, os.path.join(root, f"ft{seed}"), args.k, args.steps, seed, init_from=pre)
    sc = finetune(args.model, os.path.join(root, f"sc{seed}"), args.k, args.steps, seed)
    rows.append((seed, ft, sc))
  print(f"pretrain on digits 0-4: test accuracy {acc_pre:.4f} ({args.pretrain_steps} steps)")
  print(f"{args.model}, digits 5-9, {args.k} train examples per class, {args.steps} steps:")
  for seed, ft, sc in rows:
    print(f"  seed {seed}: fine-tuned {ft:.4f}  scratch {sc:.4f}")
  ft, sc = np.mean([r[1] for r in rows]), np.mean([r[2] for r in rows])
  print(f"  mean:   fine-tuned {ft:.4f}  scratch {sc:.4f}  (+{100 * (ft - sc):.1f} pt)")


if __name__ == "__main__":
  main()
