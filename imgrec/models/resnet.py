"""ResNet v1.5 (He et al. 2016; stride in the 3x3 conv of the bottleneck).

`stem="auto"` picks the CIFAR stem (3x3 conv, stride 1, no max-pool) for inputs of at
most 64 px and the ImageNet stem (7x7/2 conv + 3x3/2 max-pool) above that.
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from imgrec.models.layers import Conv

# Symmetric padding for strided 3x3 convs, as torchvision (and PyTorch) do. "SAME" pads a
# stride-2 conv on an even input (0, 1), which shifts the sampling grid: imported
# torchvision weights would then see other pixels than they were trained on.
PAD3 = ((1, 1), (1, 1))


class BasicBlock(nn.Module):
  features: int
  strides: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.features, (3, 3), (self.strides, self.strides), padding=PAD3, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), name="conv2")(y)
    y = self.norm(name="bn2", scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.features, (1, 1), (self.strides, self.strides), name="proj_conv")(x)
      residual = self.norm(name="proj_bn")(residual)
    return nn.relu(residual + y)


class Bottleneck(nn.Module):
  features: int
  strides: int
  conv: Any
  norm: Any
  expansion: int = 4

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.features, (1, 1), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.features, (3, 3), (self.strides, self.strides), padding=PAD3, name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.features * self.expansion, (1, 1), name="conv3")(y)
    y = self.norm(name="bn3", scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.features * self.expansion, (1, 1), (self.strides, self.strides),
                           name="proj_conv")(x)
      residual = self.norm(name="proj_bn")(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  num_classes: int
  stage_sizes: Sequence[int]
  block: str = "basic"  # "basic" | "bottleneck"
  width: int = 64
  stem: str = "auto"  # "auto" | "cifar" | "imagenet"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(Conv, use_bias=False, padding="SAME", dtype=self.dtype,
                             param_dtype=self.param_dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype)
    stem = self.stem
    if stem == "auto":
      stem = "cifar" if max(x.shape[1], x.shape[2]) <= 64 else "imagenet"
    if stem not in ("cifar", "imagenet"):
      raise ValueError(f"stem must be 'auto', 'cifar' or 'imagenet', got {self.stem!r}")
    x = x.astype(self.dtype)
    if stem == "imagenet":
      x = conv(self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=[(1, 1), (1, 1)])
    else:
      x = conv(self.width, (3, 3), name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
    block_cls = BasicBlock if self.block == "basic" else Bottleneck
    for i, n_blocks in enumerate(self.stage_sizes):
      for j in range(n_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = block_cls(self.width * 2**i, strides, conv, norm, name=f"stage{i + 1}_block{j + 1}")(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)
    return x.astype(jnp.float32)


MODELS = {
    "resnet18": functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block="basic"),
    "resnet34": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="basic"),
    "resnet50": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="bottleneck"),
}
