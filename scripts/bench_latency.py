"""Side-by-side CPU latency of trained workdirs (e.g. a model and its channel-pruned copy).

  python scripts/bench_latency.py W1 W2 ... [--batches 1,64] [--rounds 200]

For each batch size, one jitted eval-mode call of every workdir per round, rounds repeated;
prints the median ms per call and the ratio to the first workdir.
"""
import argparse

import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, without an install

import jax
import numpy as np

from bench_compress import latencies_ms
from imgrec import state as train_state, steps, workdir as wd
from imgrec.data import sources


def main():
  p = argparse.ArgumentParser()
  p.add_argument("workdirs", nargs="+")
  p.add_argument("--batches", default="1,64")
  p.add_argument("--rounds", type=int, default=200)
  args = p.parse_args()
  variants = {}
  for w in args.workdirs:
    cfg, info, model, state = wd.restore(w)
    variants[w] = (lambda m: (lambda v, x: m.apply(v, x, train=False)))(model), jax.device_get(train_state.variables(state))
    test = sources.load(cfg.data).split(cfg.data.eval_split)
  for b in (int(s) for s in args.batches.split(",")):
    x = steps.normalize(test.get(np.arange(b))[0], info["mean"], info["std"])
    ms = latencies_ms(variants, x, args.rounds)
    first = ms[args.workdirs[0]]
    for w in args.workdirs:
      print(f"batch {b}: {w}: median {ms[w]:.3f} ms ({ms[w] / first:.2f}x of the first)")


if __name__ == "__main__":
  main()
