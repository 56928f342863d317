"""LP-FT on digits 5-9, 20 per class: fc+head trained on frozen conv/bn, then everything.

  lpft.py PRE PROBE_STEPS FT_STEPS PROBE_LR FT_LR
"""
import os
import sys, io, contextlib
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import numpy as np
import bench_transfer as bt
from imgrec import train
pre, s1, s2, lr1, lr2 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
seeds = [0, 1, 2, 3, 4]
def run(init, seed, steps, lr, tag, freeze="", reinit="(^|/)(head|fc)/"):
  cfg = bt.base_config("small_cnn", steps, seed)
  cfg.batch_size = 20
  cfg.data.classes = (5, 6, 7, 8, 9)
  cfg.data.train_per_class = 20
  cfg.data.test_fraction = 0.8
  cfg.optim.warmup_epochs = 0.0
  cfg.optim.lr = lr
  cfg.optim.freeze = freeze
  cfg.eval_every = cfg.checkpoint_every = steps
  cfg.transfer.init_from = init
  cfg.transfer.reinit = reinit
  with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    return train.train(cfg, f"runs/tr/{tag}")[1]["accuracy"]
a1, a2 = [], []
for s in seeds:
  a1.append(run(pre, s, s1, lr1, f"lp{s1}_{lr1}_{s}", freeze="^(conv|bn)"))
  a2.append(run(f"runs/tr/lp{s1}_{lr1}_{s}", s, s2, lr2, f"lpft{s1}_{lr1}_{s2}_{lr2}_{s}", reinit=""))
line = f"LP-FT pre {pre} probe {s1} steps lr {lr1} (conv/bn frozen, fc+head new) -> {np.mean(a1):.4f} {['%.4f' % a for a in a1]}; then all {s2} steps lr {lr2} -> {np.mean(a2):.4f} {['%.4f' % a for a in a2]}"
print(line)
open("runs/tr_sweep.txt", "a").write(line + "\n")
