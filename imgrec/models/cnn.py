"""Small convolutional networks for small images (digits, MNIST, Fashion-MNIST)."""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from imgrec.models.layers import Conv


class SmallCNN(nn.Module):
  """[conv3x3 -> (BN) -> relu] x convs_per_stage -> maxpool, per stage; then dense -> dropout -> head.

  Defaults suit 8x8 to 32x32 inputs. Pooling stops once the map is 1x1 wide.
  """
  num_classes: int
  widths: Sequence[int] = (32, 64)
  convs_per_stage: int = 1
  hidden: int = 128
  dropout: float = 0.2
  batch_norm: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(Conv, kernel_size=(3, 3), padding="SAME", dtype=self.dtype,
                             param_dtype=self.param_dtype, use_bias=not self.batch_norm)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    for i, width in enumerate(self.widths):
      for j in range(self.convs_per_stage):
        x = conv(width, name=f"conv{i}_{j}")(x)
        if self.batch_norm:
          x = norm(name=f"bn{i}_{j}")(x)
        x = nn.relu(x)
      if x.shape[1] >= 2 and x.shape[2] >= 2:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)
    x = nn.relu(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)
    return x.astype(jnp.float32)


MODELS = {"small_cnn": SmallCNN}
