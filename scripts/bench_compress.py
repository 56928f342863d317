"""Compression benchmark on a trained workdir: fp32 / bf16 / int8 / magnitude-pruned.

  python scripts/bench_compress.py --workdir W [--prune_steps 200]

Prints a Markdown table: params, bytes on disk (.npz), test accuracy, batch-1 CPU latency (median).
"""
import argparse
import os
import tempfile
import time

import jax
import numpy as np

from imgrec import compress, train, transfer
from imgrec.data import sources


def latency_ms(fn, variables, x, reps=200):
  fn = jax.jit(fn)
  jax.block_until_ready(fn(variables, x))
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(variables, x))
    times.append(time.perf_counter() - t)
  return 1000 * float(np.median(times))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", required=True)
  p.add_argument("--prune_steps", type=int, default=200)
  args = p.parse_args()
  out = tempfile.mkdtemp(prefix="bench_compress_")
  cfg, info, model, state = train.restore(args.workdir)
  variables = jax.device_get(train.variables(state))
  test = sources.load(cfg.data).split(cfg.data.eval_split)
  x1 = train.normalize(test.get(np.arange(1))[0], info["mean"], info["std"])
  float_fn = lambda v, x: model.apply(v, x, train=False)
  int8_fn = lambda v, x: compress.apply_int8(model, v, x)
  n_params = sum(int(np.prod(np.shape(v))) for v in jax.tree.leaves(variables["params"]))
  rows = []
  transfer.save_params(os.path.join(out, "fp32.npz"), variables)
  r = compress.compress_workdir(args.workdir, "bf16", os.path.join(out, "bf16.npz"))
  rows.append(("fp32", n_params, r["bytes_fp32"], r["accuracy_fp32"], latency_ms(float_fn, variables, x1)))
  bf16 = compress.to_float32(transfer.unflatten(transfer.load_source(os.path.join(out, "bf16.npz"))))
  rows.append(("bf16 weights (f32 compute)", n_params, r["bytes"], r["accuracy"], latency_ms(float_fn, bf16, x1)))
  r = compress.compress_workdir(args.workdir, "int8", os.path.join(out, "int8.npz"))
  q = compress.load_int8(os.path.join(out, "int8.npz"))
  rows.append(("int8 PTQ (int8 ops, int32 acc)", n_params, r["bytes"], r["accuracy"], latency_ms(int8_fn, q, x1)))
  for s in (0.5, 0.9):
    r = compress.compress_workdir(args.workdir, "prune", os.path.join(out, f"prune{s}"), sparsity=s,
                                  steps=args.prune_steps)
    pv = transfer.unflatten(transfer.load_source(os.path.join(out, f"prune{s}", "params.npz")))
    nz = sum(int(np.count_nonzero(v)) for v in jax.tree.leaves(pv["params"]))
    rows.append((f"magnitude-pruned {s:.0%} ({args.prune_steps} fine-tune steps; sparsity {r['sparsity']:.3f})",
                 nz, r["bytes"], r["accuracy"], latency_ms(float_fn, pv, x1)))
  print(f"model {cfg.model.name} on {cfg.data.source}, workdir {args.workdir}")
  print("| variant | params (non-zero) | bytes on disk | test accuracy | batch-1 CPU latency (ms) |")
  print("|---|---|---|---|---|")
  for name, n, b, a, ms in rows:
    print(f"| {name} | {n} | {b} | {a:.4f} | {ms:.3f} |")


if __name__ == "__main__":
  main()
