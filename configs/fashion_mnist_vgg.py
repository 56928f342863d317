"""VGG-11 with BatchNorm at half width, a 512-wide classifier on the 1x1 map (pool_size=1).

  imgrec train --config configs/fashion_mnist_vgg.py --workdir runs/fashion_mnist_vgg
  imgrec train --config configs/fashion_mnist_vgg.py:quick=True   # small widths, 300 steps

Expected: full run (10 epochs) not measured yet. quick=True,steps=200 with --config.batch_size=64
(scripts/bench_zoo.py): test accuracy 0.781, 100 s wall on the shared 2-core CPU (BENCHMARKS.md).
"""
from configs.common import fashion_mnist_zoo


def get_config(arg=None):
  return fashion_mnist_zoo(arg, 'vgg11_bn', {'width': 32, 'hidden': 512, 'pool_size': 1},
                           {'width': 8, 'hidden': 64, 'pool_size': 1})
