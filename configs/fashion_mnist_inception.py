"""Inception v1 (GoogLeNet) at half width; the small stem keeps 28x28 through the first blocks.

  imgrec train --config configs/fashion_mnist_inception.py --workdir runs/fashion_mnist_inception
  imgrec train --config configs/fashion_mnist_inception.py:quick=True   # small widths, 300 steps (bench_zoo budget)

Expected: full run (10 epochs) not measured yet on this machine. quick=True: see the
"Model zoo on Fashion-MNIST" table in BENCHMARKS.md (accuracy and wall time, 2-core CPU).
"""
from configs.common import fashion_mnist_zoo


def get_config(arg=None):
  return fashion_mnist_zoo(arg, 'inception_v1', {'width': 0.5},
                           {'width': 0.125})
