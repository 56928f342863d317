"""Classic CNNs: LeNet-5, AlexNet, and a small CNN for small images (digits, MNIST, Fashion-MNIST)."""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from imgrec.errors import UserError
from imgrec.models import layers
from imgrec.models.blocks import adaptive_avg_pool, pick_stem, pool
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
  conv_widths: Sequence[int] = ()  # one width per conv, overriding `widths` (channel pruning)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    n_convs = len(self.widths) * self.convs_per_stage
    if self.conv_widths and len(self.conv_widths) != n_convs:
      raise ValueError(f"conv_widths needs one width per conv ({n_convs}), got {len(self.conv_widths)}")
    conv = functools.partial(Conv, kernel_size=(3, 3), padding="SAME", dtype=self.dtype,
                             param_dtype=self.param_dtype, use_bias=not self.batch_norm)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    for i, width in enumerate(self.widths):
      for j in range(self.convs_per_stage):
        x = conv(self.conv_widths[i * self.convs_per_stage + j] if self.conv_widths else width,
                 name=f"conv{i}_{j}")(x)
        if self.batch_norm:
          x = norm(name=f"bn{i}_{j}")(x)
        x = nn.relu(x)
      if x.shape[1] >= 2 and x.shape[2] >= 2:
        x = layers.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="fc")(x)
    x = nn.relu(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)
    return x.astype(jnp.float32)


class LeNet5(nn.Module):
  """LeNet-5 (LeCun et al. 1998) in its modern form: ReLU and max-pooling.

  conv1 pads by 2, so 28x28 MNIST sees the 32x32 geometry of the paper. Needs >= 10 px.
  """
  num_classes: int
  widths: Sequence[int] = (6, 16)
  hidden: Sequence[int] = (120, 84)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if min(x.shape[1], x.shape[2]) < 10:
      raise UserError(f"lenet5 needs images of at least 10x10 pixels, got {x.shape[1]}x{x.shape[2]}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    x = pool(nn.relu(Conv(self.widths[0], (5, 5), padding=[(2, 2), (2, 2)], name="conv1", **kw)(x)), "max", 2, 2)
    x = pool(nn.relu(Conv(self.widths[1], (5, 5), padding="VALID", name="conv2", **kw)(x)), "max", 2, 2)
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, name=f"fc{i + 1}", **kw)(x))
    x = nn.Dense(self.num_classes, name="head", **kw)(x)
    return x.astype(jnp.float32)


class AlexNet(nn.Module):
  """AlexNet as in torchvision (one-GPU variant of Krizhevsky et al. 2012), names follow its indices.

  The "small" stem (auto at <= 64 px) swaps the 11x11/4 first conv for a 3x3/1 one; pools
  shrink the map only while it is at least 3 px wide.
  """
  num_classes: int
  widths: Sequence[int] = (64, 192, 384, 256, 256)
  hidden: int = 4096
  dropout: float = 0.5
  stem: str = "auto"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    if pick_stem(self.stem, x) == "imagenet":
      x = Conv(self.widths[0], (11, 11), (4, 4), padding=[(2, 2), (2, 2)], name="features_0", **kw)(x)
    else:
      x = Conv(self.widths[0], (3, 3), padding="SAME", name="features_0", **kw)(x)
    x = pool(nn.relu(x), "max", 3, 2) if min(x.shape[1:3]) >= 3 else nn.relu(x)
    x = nn.relu(Conv(self.widths[1], (5, 5), padding=[(2, 2), (2, 2)], name="features_3", **kw)(x))
    x = pool(x, "max", 3, 2) if min(x.shape[1:3]) >= 3 else x
    for index, width in zip((6, 8, 10), self.widths[2:]):
      x = nn.relu(Conv(width, (3, 3), padding="SAME", name=f"features_{index}", **kw)(x))
    x = pool(x, "max", 3, 2) if min(x.shape[1:3]) >= 3 else x
    x = adaptive_avg_pool(x, 6, 6).reshape((x.shape[0], -1))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.relu(nn.Dense(self.hidden, name="classifier_1", **kw)(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.relu(nn.Dense(self.hidden, name="classifier_4", **kw)(x))
    x = nn.Dense(self.num_classes, name="classifier_6", **kw)(x)
    return x.astype(jnp.float32)


MODELS = {"small_cnn": SmallCNN, "lenet5": LeNet5, "alexnet": AlexNet}
INPUT_SHAPES = {"small_cnn": (28, 28, 1), "lenet5": (28, 28, 1)}  # `imgrec models` default; others 224x224x3
