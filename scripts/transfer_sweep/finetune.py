"""Fine-tune (init_from PRE) vs scratch on digits 5-9, 20 per class, per seed; appends a line to runs/tr_sweep.txt.

  finetune.py PRE NAME STEPS SEEDS [JSON_OVERRIDES] [--scratch]
"""
import sys, os, json
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import numpy as np
import bench_transfer as bt
from imgrec import train
root = "runs/tr"
pre = sys.argv[1]
name = sys.argv[2]
steps = int(sys.argv[3])
seeds = [int(s) for s in sys.argv[4].split(",")]
over = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
scratch_too = "--scratch" in sys.argv
def run(init, seed, tag):
  cfg = bt.base_config("small_cnn", steps, seed)
  cfg.batch_size = 20
  cfg.data.classes = (5, 6, 7, 8, 9)
  cfg.data.train_per_class = 20
  cfg.optim.warmup_epochs = 0.0
  cfg.eval_every = cfg.checkpoint_every = steps
  cfg.transfer.init_from = init
  for k, v in over.items():
    node = cfg
    *path, last = k.split(".")
    for p in path: node = node[p]
    node[last] = tuple(tuple(x) for x in v) if k == "transfer.lr_mults" else v
  import io, contextlib
  with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    return train.train(cfg, f"{root}/{tag}")[1]["accuracy"]
ft = [run(pre, s, f"{name}_ft{s}") for s in seeds]
line = f"{name} steps {steps} {over}: ft {np.mean(ft):.4f} {['%.4f' % a for a in ft]}"
if scratch_too:
  sc = [run("", s, f"{name}_sc{s}") for s in seeds]
  line += f" | scratch {np.mean(sc):.4f} {['%.4f' % a for a in sc]}"
print(line, flush=True)
with open("runs/tr_sweep.txt", "a") as f: f.write(line + "\n")
