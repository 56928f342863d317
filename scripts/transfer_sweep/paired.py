"""Paired transfer experiment on the test-717 split: pretrain small_cnn on digits 0-4, then per seed fine-tune it
(head and fc re-initialised) and train the same model from scratch on digits 5-9 with 20 per class, same recipe.

  paired.py TAG 'MODEL_KWARGS_JSON' PRE_STEPS 'PRE_AUG' FT_STEPS 'FT_AUG' SEEDS [LR]
  PRE=DIR paired.py ...      # reuse a pretrained workdir instead of pretraining under runs/tr/TAG/pre

Prints the mean of each arm and the paired difference (mean +- standard error over seeds, and per seed).
"""
import contextlib
import io
import json
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # scripts/
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repo

import numpy as np

import bench_transfer as bt  # noqa: E402  (scripts/ is on sys.path when run as a script)
from imgrec import train

tag, kw, pre_steps, pre_aug, ft_steps, ft_aug = (sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4],
                                                 int(sys.argv[5]), sys.argv[6])
seeds = [int(s) for s in sys.argv[7].split(",")]
lr = float(sys.argv[8]) if len(sys.argv) > 8 else 3e-3
root = f"runs/tr/{tag}"


def base(steps, seed):
  c = bt.base_config("small_cnn", steps, seed)
  c.model.kwargs.update(kw)
  c.log_every = 1000
  c.eval_every = c.checkpoint_every = steps
  return c


def quiet(cfg, workdir):
  with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    return train.train(cfg, workdir)[1]["accuracy"]


pre = os.environ.get("PRE") or f"{root}/pre"
if not os.path.exists(pre + "/config.json"):
  c = base(pre_steps, 0)
  c.batch_size, c.data.classes, c.data.augment = 32, (0, 1, 2, 3, 4), pre_aug
  print(tag, "pretrain test accuracy (0-4)", quiet(c, pre), flush=True)


def run(seed, init):
  c = base(ft_steps, seed)
  c.batch_size, c.data.classes, c.data.train_per_class, c.data.test_fraction = 20, (5, 6, 7, 8, 9), 20, 0.8
  c.optim.warmup_epochs, c.optim.lr, c.data.augment = 0.0, lr, ft_aug
  c.transfer.init_from, c.transfer.reinit = init, "(^|/)(head|fc)/"
  return quiet(c, f"{root}/{'ft' if init else 'sc'}{seed}")


ft = [run(s, pre) for s in seeds]
sc = [run(s, "") for s in seeds]
d = 100 * (np.array(ft) - np.array(sc))
print(f"{tag} kwargs={kw} pretrain={pre_steps}/{pre_aug!r} finetune={ft_steps}/{ft_aug!r} lr={lr}: fine-tuned "
      f"{np.mean(ft):.4f} scratch {np.mean(sc):.4f} difference {d.mean():+.2f} +- {d.std(ddof=1) / np.sqrt(len(d)):.2f} pt,"
      f" per seed {' '.join(f'{x:+.2f}' for x in d)}", flush=True)
