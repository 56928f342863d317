"""Throughput of the whole training loop (`imgrec train`: step, finite check, logging, checkpoints), not just
the step, for one or more checkouts side by side: what per-step host work in the loop costs.

  python scripts/bench_loop.py --repo . --repo /path/to/other/checkout --runs 5 [--steps 1200] [--batch 32]

Each run is a fresh `python -m imgrec train` (small CNN on digits, compile cache off, checkpoints every 400
steps, log_every 100) in a new workdir; its steady throughput is the median of the img/s that metrics.jsonl
records per log interval, the first interval (compilation) left out. Runs alternate between the checkouts, so
machine load hits them alike; the script prints each checkout's median over runs and every run's figure.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def one_run(repo, steps, batch):
  with tempfile.TemporaryDirectory() as tmp:
    workdir = os.path.join(tmp, "w")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(repo), JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
               IMGREC_COMPILE_CACHE="off")
    cmd = [sys.executable, "-m", "imgrec", "train", "--workdir", workdir, f"--config.steps={steps}",
           f"--config.batch_size={batch}", "--config.log_every=100", "--config.checkpoint_every=400",
           f"--config.eval_every={steps}", "--config.data.prefetch=2"]
    subprocess.run(cmd, cwd=os.path.abspath(repo), env=env, check=True, capture_output=True)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rates = [r["img_per_sec"] for r in map(json.loads, f) if r["split"] == "train"]
  return statistics.median(rates[1:])


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--repo", action="append", required=True, help="a checkout of imgrec (repeat to compare)")
  p.add_argument("--runs", type=int, default=5)
  p.add_argument("--steps", type=int, default=1200)
  p.add_argument("--batch", type=int, default=32)
  args = p.parse_args()
  results = {repo: [] for repo in args.repo}
  for i in range(args.runs):
    for repo in args.repo:
      results[repo].append(one_run(repo, args.steps, args.batch))
      print(f"run {i + 1}/{args.runs} {repo}: {results[repo][-1]:.0f} img/s", flush=True)
  for repo, rates in results.items():
    print(f"{repo}: median {statistics.median(rates):.0f} img/s over {len(rates)} runs "
          f"({', '.join(f'{r:.0f}' for r in rates)})")


if __name__ == "__main__":
  main()
