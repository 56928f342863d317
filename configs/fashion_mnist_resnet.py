"""ResNet-18 with the CIFAR stem (3x3, stride 1, no max-pool).

  imgrec train --config configs/fashion_mnist_resnet.py --workdir runs/fashion_mnist_resnet
  imgrec train --config configs/fashion_mnist_resnet.py:quick=True   # small widths, 300 steps

Expected: full run (10 epochs) not measured yet. quick=True,steps=200 with --config.batch_size=64
(scripts/bench_zoo.py): test accuracy 0.829, 237 s wall on the shared 2-core CPU (BENCHMARKS.md).
"""
from configs.common import fashion_mnist_zoo


def get_config(arg=None):
  return fashion_mnist_zoo(arg, 'resnet18', {},
                           {'width': 8})
