"""EfficientNet-B0 (stochastic depth 0.2, dropout 0.2); small stem as MobileNet.

  imgrec train --config configs/fashion_mnist_efficientnet.py --workdir runs/fashion_mnist_efficientnet
  imgrec train --config configs/fashion_mnist_efficientnet.py:quick=True   # small widths, 300 steps (bench_zoo budget)

Expected: full run (10 epochs) not measured yet on this machine. quick=True: see the
"Model zoo on Fashion-MNIST" table in BENCHMARKS.md (accuracy and wall time, 2-core CPU).
"""
from configs.common import fashion_mnist_zoo


def get_config(arg=None):
  return fashion_mnist_zoo(arg, 'efficientnet_b0', {},
                           {'width_mult': 0.25, 'depth_mult': 0.34})
