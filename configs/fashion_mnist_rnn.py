"""Row LSTM: 28 rows of 28 pixels as time steps (`model=gru` for the GRU).

  imgrec train --config configs/fashion_mnist_rnn.py --workdir runs/fashion_mnist_rnn
  imgrec train --config configs/fashion_mnist_rnn.py:quick=True   # small widths, 300 steps

Expected: not measured yet (full run or quick=True); scripts/bench_zoo.py did not reach this family
in the CPU session of 2026-11-23 (BENCHMARKS.md).
"""
from configs.common import fashion_mnist_zoo


def get_config(arg=None):
  return fashion_mnist_zoo(arg, 'lstm', {'hidden': 128},
                           {'hidden': 64}, grad_clip=1.0)
