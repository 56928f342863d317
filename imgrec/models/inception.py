"""Inception v1 / GoogLeNet (Szegedy et al. 2014), laid out and named as torchvision's `googlenet`.

Like torchvision, the "5x5" branch uses a 3x3 convolution (`branch3_kernel=5` gives the
paper's). Auxiliary heads (`aux_logits=True`, off by default) are computed in training and
sown into the "intermediates" collection as `aux1_logits`/`aux2_logits`; `__call__` always returns the
main logits, so a loss that wants them applies with `mutable=["batch_stats", "intermediates"]`.
"""
import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from imgrec.models.blocks import adaptive_avg_pool, batch_norm, pick_stem, pool
from imgrec.models.layers import Conv

# name: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj)
BLOCKS = {
    "inception3a": (64, 96, 128, 16, 32, 32), "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64), "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64), "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128), "inception5b": (384, 192, 384, 48, 128, 128),
}


class BasicConv(nn.Module):
  """conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU."""
  features: int
  kernel: int
  stride: int = 1
  train: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride), padding="SAME",
             use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x)
    x = batch_norm(self.train, self.dtype, self.param_dtype, epsilon=1e-3)(name="bn")(x)
    return nn.relu(x)


class InceptionBlock(nn.Module):
  widths: tuple
  conv: Any
  branch3_kernel: int = 3

  @nn.compact
  def __call__(self, x):
    c1, c3r, c3, c5r, c5, cp = [max(1, int(w)) for w in self.widths]
    b1 = self.conv(c1, 1, name="branch1")(x)
    b2 = self.conv(c3, 3, name="branch2_1")(self.conv(c3r, 1, name="branch2_0")(x))
    b3 = self.conv(c5, self.branch3_kernel, name="branch3_1")(self.conv(c5r, 1, name="branch3_0")(x))
    b4 = self.conv(cp, 1, name="branch4_1")(pool(x, "max", 3, 1, padding=1, ceil=True))
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class AuxHead(nn.Module):
  num_classes: int
  conv: Any
  width: float
  dropout: float = 0.7
  train: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = self.conv(max(1, int(128 * self.width)), 1, name="conv")(adaptive_avg_pool(x, 4, 4))
    x = nn.relu(nn.Dense(max(1, int(1024 * self.width)), name="fc1", **kw)(x.reshape((x.shape[0], -1))))
    x = nn.Dropout(self.dropout, deterministic=not self.train)(x)
    return nn.Dense(self.num_classes, name="fc2", **kw)(x).astype(jnp.float32)


class GoogLeNet(nn.Module):
  num_classes: int
  width: float = 1.0        # multiplies every channel count (tiny test models use < 1)
  aux_logits: bool = False
  branch3_kernel: int = 3
  dropout: float = 0.2
  stem: str = "auto"        # "small" (auto at <= 64 px): stride-1 conv1, no first max-pool
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(BasicConv, train=train, dtype=self.dtype, param_dtype=self.param_dtype)
    w = lambda c: max(1, int(c * self.width))
    x = x.astype(self.dtype)
    small = pick_stem(self.stem, x) == "small"
    x = conv(w(64), 7, 1 if small else 2, name="conv1")(x)
    if not small:
      x = pool(x, "max", 3, 2, ceil=True)
    x = conv(w(192), 3, name="conv3")(conv(w(64), 1, name="conv2")(x))
    x = pool(x, "max", 3, 2, ceil=True)
    aux = []
    for name, widths in BLOCKS.items():
      if name == "inception4a" or name == "inception5a":
        x = pool(x, "max", 3, 2, ceil=True) if name == "inception4a" else pool(x, "max", 2, 2, ceil=True)
      x = InceptionBlock(tuple(c * self.width for c in widths), conv, self.branch3_kernel, name=name)(x)
      if self.aux_logits and name in ("inception4a", "inception4d") and (train or self.is_initializing()):
        head = AuxHead(self.num_classes, conv, self.width, train=train, dtype=self.dtype,
                       param_dtype=self.param_dtype, name=f"aux{len(aux) + 1}")
        aux.append(head(x))
    for i, logits in enumerate(aux):
      self.sow("intermediates", f"aux{i + 1}_logits", logits)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)
    return x.astype(jnp.float32)


MODELS = {"inception_v1": GoogLeNet}
