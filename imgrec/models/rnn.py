"""Recurrent classifiers that read an image row by row: each of the H rows (W * C values) is one
time step of a stacked LSTM or GRU; the last layer's final state feeds the head.
"""
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

CELLS = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}


class RowRNN(nn.Module):
  num_classes: int
  cell: str = "lstm"   # "lstm" | "gru"
  hidden: int = 128
  layers: int = 1
  bidirectional: bool = False
  dropout: float = 0.0  # between stacked layers and before the head
  unroll: int = 0       # steps per loop iteration; 0 = all rows (no loop, so XLA's cost analysis counts every step)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.cell not in CELLS:
      raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
    make = functools.partial(CELLS[self.cell], self.hidden, dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype).reshape(x.shape[0], x.shape[1], -1)  # (N, rows = time, W * C)
    unroll = self.unroll or x.shape[1]
    for i in range(self.layers):
      forward = nn.RNN(make(), return_carry=True, unroll=unroll, name=f"rnn{i}")
      carry, y = forward(x)
      last = carry[1] if self.cell == "lstm" else carry  # LSTM carry is (c, h)
      if self.bidirectional:
        carry_b, y_b = nn.RNN(make(), return_carry=True, reverse=True, keep_order=True,
                              unroll=unroll, name=f"rnn{i}_reverse")(x)
        y = jnp.concatenate([y, y_b], axis=-1)
        last = jnp.concatenate([last, carry_b[1] if self.cell == "lstm" else carry_b], axis=-1)
      x = nn.Dropout(self.dropout, deterministic=not train)(y)
    x = nn.Dropout(self.dropout, deterministic=not train)(last)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)
    return x.astype(jnp.float32)


MODELS = {"lstm": functools.partial(RowRNN, cell="lstm"), "gru": functools.partial(RowRNN, cell="gru")}
INPUT_SHAPES = {"lstm": (28, 28, 1), "gru": (28, 28, 1)}
