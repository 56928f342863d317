"""DenseNet-121 layout with growth rate 12 (DenseNet-BC for small images).

  imgrec train --config configs/fashion_mnist_densenet.py --workdir runs/fashion_mnist_densenet
  imgrec train --config configs/fashion_mnist_densenet.py:quick=True   # small widths, 300 steps

Expected: not measured yet (full run or quick=True); scripts/bench_zoo.py did not reach this family
in the CPU session of 2026-11-23 (BENCHMARKS.md).
"""
from configs.common import fashion_mnist_zoo


def get_config(arg=None):
  return fashion_mnist_zoo(arg, 'densenet121', {'growth': 12, 'init_features': 24},
                           {'block_sizes': (2, 2, 2), 'growth': 8, 'init_features': 16})
