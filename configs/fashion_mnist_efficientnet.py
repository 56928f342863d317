"""EfficientNet-B0 (stochastic depth 0.2, dropout 0.2); small stem as MobileNet.

  imgrec train --config configs/fashion_mnist_efficientnet.py --workdir runs/fashion_mnist_efficientnet
  imgrec train --config configs/fashion_mnist_efficientnet.py:quick=True   # small widths, 300 steps

Expected: not measured yet (full run or quick=True); scripts/bench_zoo.py did not reach this family
in the CPU session of 2026-11-23 (BENCHMARKS.md).
"""
from configs.common import fashion_mnist_zoo


def get_config(arg=None):
  return fashion_mnist_zoo(arg, 'efficientnet_b0', {},
                           {'width_mult': 0.25, 'depth_mult': 0.34})
