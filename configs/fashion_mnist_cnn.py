"""Small BatchNorm CNN on Fashion-MNIST, sized for a 2-core CPU.

  apt-get install -y dataset-fashion-mnist
  imgrec train --config configs/fashion_mnist_cnn.py --workdir runs/fmnist_cnn

Expected: test accuracy >= 92% (see BENCHMARKS.md for the measured figure and wall time
on the 2-core CPU; `scripts/bench_fashion_mnist.sh` measures it).
"""
from imgrec.config import defaults


def get_config(arg=None):
  del arg
  c = defaults()
  c.data.source = "fashion_mnist"
  c.model.name = "small_cnn"
  c.model.kwargs.widths = (32, 64)
  c.model.kwargs.convs_per_stage = 1
  c.model.kwargs.hidden = 128
  c.model.kwargs.dropout = 0.3
  c.batch_size = 128
  c.epochs = 6.0
  c.optim.name = "adamw"
  c.optim.lr = 3e-3
  c.optim.weight_decay = 5e-4
  c.optim.warmup_epochs = 0.3
  c.log_every = 100
  return c
