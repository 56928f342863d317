"""Wall time and test accuracy of a full training run (default: the Fashion-MNIST small CNN).

  python scripts/bench_fashion_mnist.py [--config configs/fashion_mnist_cnn.py] [--seeds 0]

Trains from scratch in a fresh workdir (the same code path as `imgrec train`, compile and
evaluations included in the wall time) and prints one JSON line per seed, then the median.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from imgrec import config, train  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config", default="configs/fashion_mnist_cnn.py")
  p.add_argument("--seeds", default="0", help="comma-separated seeds")
  p.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides, e.g. epochs=3")
  args = p.parse_args()
  results = []
  for seed in [int(s) for s in args.seeds.split(",")]:
    cfg = config.load(args.config)
    config.override(cfg, [f"seed={seed}", *args.overrides])
    with tempfile.TemporaryDirectory() as workdir:
      t0 = time.perf_counter()
      _, result = train.train(cfg, workdir)
      wall = time.perf_counter() - t0
      with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rates = [r["img_per_sec"] for r in map(json.loads, f) if r["split"] == "train"]
    row = {"config": args.config, "seed": seed, "test_accuracy": result["accuracy"], "wall_s": round(wall, 1),
           "median_train_img_per_sec": round(statistics.median(rates[1:] or rates), 1)}
    results.append(row)
    print(json.dumps(row), flush=True)
  print(json.dumps({"median_test_accuracy": statistics.median(r["test_accuracy"] for r in results),
                    "median_wall_s": statistics.median(r["wall_s"] for r in results)}))


if __name__ == "__main__":
  main()
