"""Small BatchNorm CNN on Fashion-MNIST, sized for a 2-core CPU (the cnn family's config).

  apt-get install -y dataset-fashion-mnist
  imgrec train --config configs/fashion_mnist_cnn.py --workdir runs/fmnist_cnn
  imgrec train --config configs/fashion_mnist_cnn.py:quick=True   # 300 steps
  (LeNet-5 and AlexNet: configs/fashion_mnist_lenet.py, model=alexnet)

Measured by `python scripts/bench_fashion_mnist.py --seeds 0,1,2` (2-core CPU, quiet): test accuracy
0.9241 / 0.9231 / 0.9242 in 287 / 284 / 350 s wall (median 287 s), compile and evaluations included
(BENCHMARKS.md, "Training core").
"""
from configs.common import fashion_mnist_zoo


def get_config(arg=None):
  c = fashion_mnist_zoo(arg, "small_cnn", dict(widths=(32, 64), hidden=128, dropout=0.1), {},
                        epochs=5.0, lr=3e-3, weight_decay=5e-4)
  if c.steps == 0:
    c.optim.warmup_epochs = 0.3
    c.log_every = 100
  return c
