"""Row LSTM: 28 rows of 28 pixels as time steps (`model=gru` for the GRU).

  imgrec train --config configs/fashion_mnist_rnn.py --workdir runs/fashion_mnist_rnn
  imgrec train --config configs/fashion_mnist_rnn.py:quick=True   # small widths, 300 steps (bench_zoo budget)

Expected: full run (10 epochs) not measured yet on this machine. quick=True: see the
"Model zoo on Fashion-MNIST" table in BENCHMARKS.md (accuracy and wall time, 2-core CPU).
"""
from configs.common import fashion_mnist_zoo


def get_config(arg=None):
  return fashion_mnist_zoo(arg, 'lstm', {'hidden': 128},
                           {'hidden': 64}, grad_clip=1.0)
