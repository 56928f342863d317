"""LeNet-5 (ReLU, max-pool); `model=alexnet` or `model=small_cnn` for the other classic CNNs.

  imgrec train --config configs/fashion_mnist_cnn.py --workdir runs/fashion_mnist_cnn
  imgrec train --config configs/fashion_mnist_cnn.py:quick=True   # small widths, 300 steps (bench_zoo budget)

Expected: full run (10 epochs) not measured yet on this machine. quick=True: see the
"Model zoo on Fashion-MNIST" table in BENCHMARKS.md (accuracy and wall time, 2-core CPU).
"""
from configs.common import fashion_mnist_zoo


def get_config(arg=None):
  return fashion_mnist_zoo(arg, 'lenet5', {},
                           {})
