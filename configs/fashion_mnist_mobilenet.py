"""MobileNetV2 1.0; the small stem keeps stride 1 in the stem and the first strided block.

  imgrec train --config configs/fashion_mnist_mobilenet.py --workdir runs/fashion_mnist_mobilenet
  imgrec train --config configs/fashion_mnist_mobilenet.py:quick=True   # small widths, 300 steps (bench_zoo budget)

Expected: full run (10 epochs) not measured yet on this machine. quick=True: see the
"Model zoo on Fashion-MNIST" table in BENCHMARKS.md (accuracy and wall time, 2-core CPU).
"""
from configs.common import fashion_mnist_zoo


def get_config(arg=None):
  return fashion_mnist_zoo(arg, 'mobilenet_v2', {},
                           {'width_mult': 0.35})
