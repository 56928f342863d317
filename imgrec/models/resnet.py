"""ResNets: v1.5 (He et al. 2016; stride in the 3x3 conv of the bottleneck), pre-activation
(He et al. 2016b), Wide-ResNet (Zagoruyko & Komodakis 2016) and squeeze-and-excitation
(Hu et al. 2018) variants, all from the one `ResNet` module.

`stem="auto"` picks the CIFAR stem (3x3 conv, stride 1, no max-pool) for inputs of at
most 64 px and the ImageNet stem (7x7/2 conv + 3x3/2 max-pool) above that.
Stochastic depth (`drop_path_rate`) grows linearly from 0 to the rate in the last block.
"""
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from imgrec.models.blocks import SqueezeExcite, drop_path
from imgrec.models import layers
from imgrec.models.layers import Conv

# Symmetric padding for strided 3x3 convs, as torchvision (and PyTorch) do. "SAME" pads a
# stride-2 conv on an even input (0, 1), which shifts the sampling grid: imported
# torchvision weights would then see other pixels than they were trained on.
PAD3 = ((1, 1), (1, 1))


class _Block(nn.Module):
  """The fields every residual block takes; `ResNet` builds each with (features, strides, conv, norm)."""
  features: int
  strides: int
  conv: Any
  norm: Any
  se: bool = False
  dropout: float = 0.0
  drop_path: float = 0.0
  train: bool = False
  inner: Sequence[int] = ()  # widths of the inner convs (channel pruning); default: `features`


class BasicBlock(_Block):
  @nn.compact
  def __call__(self, x):
    residual = x
    inner = tuple(self.inner) or (self.features,)
    y = self.conv(inner[0], (3, 3), (self.strides, self.strides), padding=PAD3, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = nn.Dropout(self.dropout, deterministic=not self.train)(y)
    y = self.conv(self.features, (3, 3), name="conv2")(y)
    y = self.norm(name="bn2", scale_init=nn.initializers.zeros)(y)
    if self.se:
      y = SqueezeExcite(max(1, self.features // 16), dtype=y.dtype, name="se")(y)
    if residual.shape != y.shape:
      residual = self.conv(self.features, (1, 1), (self.strides, self.strides), name="proj_conv")(x)
      residual = self.norm(name="proj_bn")(residual)
    return nn.relu(residual + drop_path(self, y, self.drop_path, self.train))


class Bottleneck(_Block):
  expansion: int = 4

  @nn.compact
  def __call__(self, x):
    residual = x
    inner = tuple(self.inner) or (self.features, self.features)
    y = self.conv(inner[0], (1, 1), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(inner[1], (3, 3), (self.strides, self.strides), padding=PAD3, name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = nn.Dropout(self.dropout, deterministic=not self.train)(y)
    y = self.conv(self.features * self.expansion, (1, 1), name="conv3")(y)
    y = self.norm(name="bn3", scale_init=nn.initializers.zeros)(y)
    if self.se:
      y = SqueezeExcite(max(1, self.features * self.expansion // 16), dtype=y.dtype, name="se")(y)
    if residual.shape != y.shape:
      residual = self.conv(self.features * self.expansion, (1, 1), (self.strides, self.strides),
                           name="proj_conv")(x)
      residual = self.norm(name="proj_bn")(residual)
    return nn.relu(residual + drop_path(self, y, self.drop_path, self.train))


class PreActBasicBlock(_Block):
  """bn -> relu -> conv3x3 -> bn -> relu -> (dropout) -> conv3x3, plus the identity or a projection
  of the pre-activated input. The Wide-ResNet block."""
  @nn.compact
  def __call__(self, x):
    pre = nn.relu(self.norm(name="bn1")(x))
    inner = tuple(self.inner) or (self.features,)
    y = self.conv(inner[0], (3, 3), (self.strides, self.strides), name="conv1")(pre)
    y = nn.relu(self.norm(name="bn2")(y))
    y = nn.Dropout(self.dropout, deterministic=not self.train)(y)
    y = self.conv(self.features, (3, 3), name="conv2")(y)
    if self.se:
      y = SqueezeExcite(max(1, self.features // 16), dtype=y.dtype, name="se")(y)
    residual = x
    if x.shape != y.shape:
      residual = self.conv(self.features, (1, 1), (self.strides, self.strides), name="proj_conv")(pre)
    return residual + drop_path(self, y, self.drop_path, self.train)


class PreActBottleneck(_Block):
  expansion: int = 4

  @nn.compact
  def __call__(self, x):
    pre = nn.relu(self.norm(name="bn1")(x))
    inner = tuple(self.inner) or (self.features, self.features)
    y = self.conv(inner[0], (1, 1), name="conv1")(pre)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(inner[1], (3, 3), (self.strides, self.strides), name="conv2")(y)
    y = nn.relu(self.norm(name="bn3")(y))
    y = nn.Dropout(self.dropout, deterministic=not self.train)(y)
    y = self.conv(self.features * self.expansion, (1, 1), name="conv3")(y)
    if self.se:
      y = SqueezeExcite(max(1, self.features * self.expansion // 16), dtype=y.dtype, name="se")(y)
    residual = x
    if x.shape != y.shape:
      residual = self.conv(self.features * self.expansion, (1, 1), (self.strides, self.strides),
                           name="proj_conv")(pre)
    return residual + drop_path(self, y, self.drop_path, self.train)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck,
          "preact_basic": PreActBasicBlock, "preact_bottleneck": PreActBottleneck}
# Inner convs of each block kind, in `inner` order, as (conv, the norm after it, the conv reading it):
# their output channels are internal to the block, so channel pruning may remove them.
INNER_CONVS = {"basic": (("conv1", "bn1", "conv2"),),
               "bottleneck": (("conv1", "bn1", "conv2"), ("conv2", "bn2", "conv3")),
               "preact_basic": (("conv1", "bn2", "conv2"),),
               "preact_bottleneck": (("conv1", "bn2", "conv2"), ("conv2", "bn3", "conv3"))}


class ResNet(nn.Module):
  num_classes: int
  stage_sizes: Sequence[int]
  block: str = "basic"  # "basic" | "bottleneck" | "preact_basic" | "preact_bottleneck"
  width: int = 64       # first stage; stage i has width * 2**i
  stem_width: Optional[int] = None  # default: `width` (Wide-ResNet keeps 16)
  stem: str = "auto"  # "auto" | "cifar" | "imagenet"
  se: bool = False    # squeeze-and-excitation in every block (reduction 16)
  dropout: float = 0.0          # between the convs of a block (Wide-ResNet)
  drop_path_rate: float = 0.0   # stochastic depth of the last block
  inner_widths: Sequence[int] = ()  # per block, its inner conv widths (basic 1, bottleneck 2): channel pruning
  features: bool = False  # return {stride: each stage's output} (models.create_backbone) instead of the logits
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.block not in BLOCKS:
      raise ValueError(f"block must be one of {', '.join(BLOCKS)}, got {self.block!r}")
    conv = functools.partial(Conv, use_bias=False, padding="SAME", dtype=self.dtype,
                             param_dtype=self.param_dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype)
    preact = self.block.startswith("preact")
    stem = self.stem
    if stem == "auto":
      stem = "cifar" if max(x.shape[1], x.shape[2]) <= 64 else "imagenet"
    if stem not in ("cifar", "imagenet"):
      raise ValueError(f"stem must be 'auto', 'cifar' or 'imagenet', got {self.stem!r}")
    stem_width = self.stem_width or self.width
    x = x.astype(self.dtype)
    stride = 4 if stem == "imagenet" else 1
    if stem == "imagenet":
      x = conv(stem_width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
      x = layers.max_pool(x, (3, 3), strides=(2, 2), padding=[(1, 1), (1, 1)])
    else:
      x = conv(stem_width, (3, 3), name="stem_conv")(x)
      if not preact:  # a pre-activation network normalises at the start of each block instead
        x = nn.relu(norm(name="stem_bn")(x))
    block_cls = BLOCKS[self.block]
    total, index = sum(self.stage_sizes), 0
    per_block = len(INNER_CONVS[self.block])
    stage_outputs = {}
    if self.inner_widths and len(self.inner_widths) != per_block * total:
      raise ValueError(f"inner_widths needs {per_block} width(s) per block ({per_block * total}), "
                       f"got {len(self.inner_widths)}")
    for i, n_blocks in enumerate(self.stage_sizes):
      for j in range(n_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        rate = self.drop_path_rate * index / max(1, total - 1)
        inner = tuple(self.inner_widths[per_block * index:per_block * (index + 1)])
        x = block_cls(self.width * 2**i, strides, conv, norm, se=self.se, dropout=self.dropout, drop_path=rate,
                      train=train, inner=inner, name=f"stage{i + 1}_block{j + 1}")(x)
        index += 1
      stride *= 2 if i > 0 else 1
      stage_outputs[stride] = x
    if preact:
      x = nn.relu(norm(name="final_bn")(x))
    if self.features:  # no head parameters are created; the pre-activation network's last stage is normalised
      return {**stage_outputs, stride: x}
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="head")(x)
    return x.astype(jnp.float32)


DEPTHS = {18: ((2, 2, 2, 2), "basic"), 34: ((3, 4, 6, 3), "basic"), 50: ((3, 4, 6, 3), "bottleneck"),
          101: ((3, 4, 23, 3), "bottleneck"), 152: ((3, 8, 36, 3), "bottleneck")}


def wide_resnet(depth, widen, **kwargs):
  """WRN-depth-widen for small images: 3 stages of (depth - 4) / 6 pre-activation basic blocks."""
  if (depth - 4) % 6:
    raise ValueError(f"Wide-ResNet depth must be 6n + 4, got {depth}")
  n = (depth - 4) // 6
  kwargs = {"stem": "cifar", **kwargs}
  return ResNet(stage_sizes=(n, n, n), block="preact_basic", width=16 * widen, stem_width=16, **kwargs)


MODELS = {}
for _depth, (_stages, _block) in DEPTHS.items():
  MODELS[f"resnet{_depth}"] = functools.partial(ResNet, stage_sizes=_stages, block=_block)
  MODELS[f"preact_resnet{_depth}"] = functools.partial(ResNet, stage_sizes=_stages, block="preact_" + _block)
  MODELS[f"se_resnet{_depth}"] = functools.partial(ResNet, stage_sizes=_stages, block=_block, se=True)
MODELS["wrn28_10"] = functools.partial(wide_resnet, depth=28, widen=10)
MODELS["wrn40_4"] = functools.partial(wide_resnet, depth=40, widen=4)
MODELS["wrn16_4"] = functools.partial(wide_resnet, depth=16, widen=4)

INPUT_SHAPES = {name: (32, 32, 3) for name in MODELS if name.startswith("wrn")}  # `imgrec models` default
