"""ResNet-18 with the CIFAR stem (3x3, stride 1, no max-pool).

  imgrec train --config configs/fashion_mnist_resnet.py --workdir runs/fashion_mnist_resnet
  imgrec train --config configs/fashion_mnist_resnet.py:quick=True   # small widths, 300 steps (bench_zoo budget)

Expected: full run (10 epochs) not measured yet on this machine. quick=True: see the
"Model zoo on Fashion-MNIST" table in BENCHMARKS.md (accuracy and wall time, 2-core CPU).
"""
from configs.common import fashion_mnist_zoo


def get_config(arg=None):
  return fashion_mnist_zoo(arg, 'resnet18', {},
                           {'width': 8})
