"""MobileNetV2 1.0; the small stem keeps stride 1 in the stem and the first strided block.

  imgrec train --config configs/fashion_mnist_mobilenet.py --workdir runs/fashion_mnist_mobilenet
  imgrec train --config configs/fashion_mnist_mobilenet.py:quick=True   # small widths, 300 steps

Expected: not measured yet (full run or quick=True); scripts/bench_zoo.py did not reach this family
in the CPU session of 2026-11-23 (BENCHMARKS.md).
"""
from configs.common import fashion_mnist_zoo


def get_config(arg=None):
  return fashion_mnist_zoo(arg, 'mobilenet_v2', {},
                           {'width_mult': 0.35})
