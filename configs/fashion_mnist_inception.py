"""Inception v1 (GoogLeNet) at half width; the small stem keeps 28x28 through the first blocks.

  imgrec train --config configs/fashion_mnist_inception.py --workdir runs/fashion_mnist_inception
  imgrec train --config configs/fashion_mnist_inception.py:quick=True   # small widths, 300 steps

Expected: full run (10 epochs) not measured yet. quick=True,steps=200 with --config.batch_size=64
(scripts/bench_zoo.py): test accuracy 0.803, 1129 s wall on the shared 2-core CPU (BENCHMARKS.md).
"""
from configs.common import fashion_mnist_zoo


def get_config(arg=None):
  return fashion_mnist_zoo(arg, 'inception_v1', {'width': 0.5},
                           {'width': 0.125})
