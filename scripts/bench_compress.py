"""Compression benchmark on a trained workdir: fp32 / bf16 / int8 / magnitude-pruned / channel-pruned,
and optionally a distilled small CNN against the same CNN trained alone.

  python scripts/bench_compress.py --workdir W [--prune_steps 200] [--channel_sparsity 0.5]
      [--control] [--distill_steps 500 --student_widths 8,16 --student_hidden 32] [--json F]

Prints a Markdown table: params, bytes on disk (.npz), test accuracy, batch-1 CPU latency.
Latencies are measured side by side at the end: one call of every variant per round, rounds
repeated, median per variant, so that load from other jobs falls on all of them alike.
`--control` adds the unpruned network fine-tuned with the channel-pruning recipe for the same
steps (channel sparsity 0): what the extra training alone is worth.
"""
import argparse
import json
import os
import tempfile
import time

import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo, without an install

import jax
import numpy as np

from imgrec import compress, state as train_state, steps, train, workdir as wd
from imgrec.data import sources
from bench_distill import student  # noqa: E402  (scripts/ is on sys.path when run as a script)


def latencies_ms(variants, x, rounds):
  """{name: median ms} of jitted batch-1 calls, the variants interleaved round by round."""
  fns = {name: jax.jit(fn) for name, (fn, _) in variants.items()}
  for name, (_, v) in variants.items():
    jax.block_until_ready(fns[name](v, x))  # compile and warm up
  times = {name: [] for name in variants}
  for _ in range(rounds):
    for name, (_, v) in variants.items():
      t = time.perf_counter()
      jax.block_until_ready(fns[name](v, x))
      times[name].append(time.perf_counter() - t)
  return {name: 1000 * float(np.median(ts)) for name, ts in times.items()}


def n_params(variables):
  return sum(int(np.prod(np.shape(v))) for v in jax.tree.leaves(variables["params"]))


def npz_bytes(variables, path):
  wd.save_params(path, variables)
  return os.path.getsize(path)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", required=True)
  p.add_argument("--prune_steps", type=int, default=200, help="fine-tuning steps of every pruned variant")
  p.add_argument("--channel_sparsity", default="0.5", help="comma-separated channel fractions to remove")
  p.add_argument("--control", action="store_true", help="also the unpruned network fine-tuned as the channel rows")
  p.add_argument("--distill_steps", type=int, default=0, help="> 0: student alone vs distilled, this many steps")
  p.add_argument("--student_widths", default="8,16")
  p.add_argument("--student_hidden", type=int, default=32)
  p.add_argument("--rounds", type=int, default=200, help="latency rounds (one call per variant each)")
  p.add_argument("--out", help="directory for the artifacts (default: a temporary one)")
  p.add_argument("--json", help="also write the rows here")
  args = p.parse_args()
  out = args.out or tempfile.mkdtemp(prefix="bench_compress_")
  os.makedirs(out, exist_ok=True)
  t0 = time.perf_counter()
  cfg, info, model, state = wd.restore(args.workdir)
  variables = jax.device_get(train_state.variables(state))
  test = sources.load(cfg.data).split(cfg.data.eval_split)
  x1 = steps.normalize(test.get(np.arange(1))[0], info["mean"], info["std"])
  float_fn = lambda m: (lambda v, x: m.apply(v, x, train=False))
  rows, variants = [], {}

  def add(name, params, nbytes, acc, fn, v):
    rows.append({"variant": name, "params": params, "bytes": nbytes, "accuracy": acc})
    variants[name] = (fn, v)
    print(f"[{time.perf_counter() - t0:.0f} s] {name}: params {params}, {nbytes} bytes, accuracy {acc:.4f}", flush=True)

  r = compress.compress_workdir(args.workdir, "bf16", os.path.join(out, "bf16.npz"))
  add("fp32", n_params(variables), r["bytes_fp32"], r["accuracy_fp32"], float_fn(model), variables)
  bf16 = compress.quantize.to_float32(wd.unflatten(wd.load_params(os.path.join(out, "bf16.npz"))))
  add("bf16 weights (f32 compute)", n_params(variables), r["bytes"], r["accuracy"], float_fn(model), bf16)
  r = compress.compress_workdir(args.workdir, "int8", os.path.join(out, "int8.npz"))
  add("int8 PTQ (int8 ops, int32 acc)", n_params(variables), r["bytes"], r["accuracy"],
      lambda v, x: compress.quantize.apply_int8(model, v, x), compress.quantize.load_int8(os.path.join(out, "int8.npz")))
  for s in (0.5, 0.9):
    r = compress.compress_workdir(args.workdir, "prune", os.path.join(out, f"prune{s}"), sparsity=s,
                                  steps=args.prune_steps, finetune=train.train)
    pv = wd.unflatten(wd.load_params(os.path.join(out, f"prune{s}", "params.npz")))
    nz = sum(int(np.count_nonzero(v)) for v in jax.tree.leaves(pv["params"]))
    add(f"magnitude-pruned {s:.0%} (+{args.prune_steps} steps; non-zero params, zip-deflated .npz)",
        nz, r["bytes"], r["accuracy"], float_fn(model), pv)
  channel = [float(s) for s in args.channel_sparsity.split(",") if s] + ([0.0] if args.control else [])
  for s in channel:
    r = compress.compress_workdir(args.workdir, "channels", os.path.join(out, f"channels{s}"), sparsity=s,
                                  steps=args.prune_steps, finetune=train.train)
    _, _, small, small_state = wd.restore(os.path.join(out, f"channels{s}"))
    name = (f"channel-pruned {s:.0%} of prunable conv channels (+{args.prune_steps} steps)" if s else
            f"control: unpruned, +{args.prune_steps} steps (same recipe)")
    add(name, r["params"], r["bytes"], r["accuracy"], float_fn(small), jax.device_get(train_state.variables(small_state)))
  if args.distill_steps:
    widths = tuple(int(w) for w in args.student_widths.split(","))
    for label, teacher in (("alone", ""), ("distilled", args.workdir)):
      scfg = student(cfg, widths, args.student_hidden, args.distill_steps, 0, teacher)
      acc = train.train(scfg, os.path.join(out, f"student_{label}"))[1]["accuracy"]
      _, _, smodel, sstate = wd.restore(os.path.join(out, f"student_{label}"))
      sv = jax.device_get(train_state.variables(sstate))
      add(f"small_cnn {widths} hidden {args.student_hidden}, {label} ({args.distill_steps} steps)", n_params(sv),
          npz_bytes(sv, os.path.join(out, f"student_{label}.npz")), acc, float_fn(smodel), sv)
  ms = latencies_ms(variants, x1, args.rounds)
  for row in rows:
    row["latency_ms"] = ms[row["variant"]]
  print(f"model {cfg.model.name} {dict(cfg.model.kwargs)} on {cfg.data.source}, workdir {args.workdir}; "
        f"artifacts in {out}; {time.perf_counter() - t0:.0f} s")
  print("| variant | params | bytes on disk | test accuracy | batch-1 CPU latency (median ms) |")
  print("|---|---|---|---|---|")
  for row in rows:
    print(f"| {row['variant']} | {row['params']} | {row['bytes']} | {row['accuracy']:.4f} | {row['latency_ms']:.3f} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
