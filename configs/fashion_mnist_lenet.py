"""LeNet-5 (ReLU, max-pool); `model=alexnet` or `model=small_cnn` for the other classic CNNs.

  imgrec train --config configs/fashion_mnist_lenet.py --workdir runs/fashion_mnist_lenet
  imgrec train --config configs/fashion_mnist_lenet.py:quick=True   # small widths, 300 steps

Expected: full run (10 epochs) not measured yet. quick=True,steps=200 with --config.batch_size=64
(scripts/bench_zoo.py): test accuracy 0.828, 72 s wall on the shared 2-core CPU (BENCHMARKS.md).
"""
from configs.common import fashion_mnist_zoo


def get_config(arg=None):
  return fashion_mnist_zoo(arg, 'lenet5', {},
                           {})
