"""DenseNet-BC (Huang et al. 2017), laid out and named as torchvision's `densenet121/169`.

Each dense layer is bn -> relu -> 1x1 conv (bn_size * growth) -> bn -> relu -> 3x3 conv
(growth), concatenated onto its input; transitions halve the channels and the map.
The "small" stem (auto at <= 64 px) is a 3x3/1 conv without the max-pool.
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from imgrec.models.blocks import batch_norm, pick_stem, pool
from imgrec.models.layers import Conv


class DenseLayer(nn.Module):
  growth: int
  bn_size: int
  conv: Any
  norm: Any
  dropout: float = 0.0
  train: bool = False

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.bn_size * self.growth, (1, 1), name="conv1")(nn.relu(self.norm(name="norm1")(x)))
    y = self.conv(self.growth, (3, 3), name="conv2")(nn.relu(self.norm(name="norm2")(y)))
    y = nn.Dropout(self.dropout, deterministic=not self.train)(y)
    return jnp.concatenate([x, y], axis=-1)


class DenseNet(nn.Module):
  num_classes: int
  block_sizes: Sequence[int] = (6, 12, 24, 16)
  growth: int = 32
  init_features: int = 64
  bn_size: int = 4
  dropout: float = 0.0   # after each dense layer, as torchvision's drop_rate
  stem: str = "auto"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(Conv, use_bias=False, padding="SAME", dtype=self.dtype, param_dtype=self.param_dtype)
    norm = batch_norm(train, self.dtype, self.param_dtype)
    x = x.astype(self.dtype)
    if pick_stem(self.stem, x) == "imagenet":
      x = conv(self.init_features, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="features_conv0")(x)
      x = nn.relu(norm(name="features_norm0")(x))
      x = pool(x, "max", 3, 2, padding=1)
    else:
      x = conv(self.init_features, (3, 3), name="features_conv0")(x)
      x = nn.relu(norm(name="features_norm0")(x))
    for i, n_layers in enumerate(self.block_sizes):
      for j in range(n_layers):
        x = DenseLayer(self.growth, self.bn_size, conv, norm, self.dropout, train,
                       name=f"features_denseblock{i + 1}_denselayer{j + 1}")(x)
      if i < len(self.block_sizes) - 1:
        x = nn.relu(norm(name=f"features_transition{i + 1}_norm")(x))
        x = conv(x.shape[-1] // 2, (1, 1), name=f"features_transition{i + 1}_conv")(x)
        x = pool(x, "avg", 2, 2)
    x = nn.relu(norm(name="features_norm5")(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="classifier")(x)
    return x.astype(jnp.float32)


MODELS = {
    "densenet121": functools.partial(DenseNet, block_sizes=(6, 12, 24, 16)),
    "densenet169": functools.partial(DenseNet, block_sizes=(6, 12, 32, 32)),
}
