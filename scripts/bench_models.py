"""Wall time of `imgrec models` as a user sees it: a fresh process each time, from launch to exit.

  python scripts/bench_models.py [--repeats 5] [--flops resnet50]

Times, as medians over --repeats runs (alternated, each in a fresh process), each case cold (its own
empty XDG_CACHE_HOME: nothing traced, compiled or measured before) and cached (a cache filled by a
first run, as a user's second call finds it):
  `imgrec models`                  every registered model: family, parameters, input size
  `imgrec models NAME --flops`     the same for one model, plus its forward GFLOPs (a compile)
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(args, cache_home):
  env = dict(os.environ, XDG_CACHE_HOME=cache_home)
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "imgrec", "models", *args], cwd=ROOT, env=env, check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return time.perf_counter() - start


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--flops", default="resnet50", help="the model whose FLOPs are timed")
  args = p.parse_args()
  cases = {f"{what}, {state}": args_ for what, args_ in (("all models", []),
                                                          (f"{args.flops} --flops", [args.flops, "--flops"]))
           for state in ("cold", "cached")}
  times = {name: [] for name in cases}
  with tempfile.TemporaryDirectory() as shared:
    for name, case in cases.items():
      if name.endswith("cached"):
        timed(case, shared)  # fills the shared cache
    for _ in range(args.repeats):
      for name, case in cases.items():
        with tempfile.TemporaryDirectory() as fresh:
          times[name].append(timed(case, shared if name.endswith("cached") else fresh))
  for name, ts in times.items():
    print(f"{name:<32} median {statistics.median(ts):6.2f} s  (min {min(ts):.2f}, max {max(ts):.2f}, n={len(ts)})")


if __name__ == "__main__":
  main()
