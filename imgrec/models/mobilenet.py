"""MobileNetV2 (Sandler et al. 2018, width multiplier) and MobileNetV3-Small/Large (Howard et al.
2019), laid out as torchvision's: `features_{i}` blocks with `expand` / `dw` / `se` / `project` parts.

The "small" stem (auto at <= 64 px) keeps stride 1 in the stem and in the first strided
block, so a 28x28 image ends at 4x4 instead of 1x1. Convolutions pad (k-1)/2 on every side, as
torchvision does (see ConvBNAct), so its weights import exactly (imgrec/checkpoint_import).

`features=True` (models.create_backbone) returns {stride: the last block's output at each stride}, the last
1x1 conv (`features_{n}`) included at the deepest stride: on the ImageNet stem strides 2 to 32. No classifier
parameters are created then.
"""
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from imgrec.models.blocks import SqueezeExcite, batch_norm, make_divisible, pick_stem
from imgrec.models.layers import Conv


class ConvBNAct(nn.Module):
  """conv (no bias) -> BatchNorm -> activation (None: linear).

  Pads (k-1)/2 on each side like torchvision's Conv2dNormActivation: same output sizes as "SAME",
  but "SAME" pads a strided conv on an even input (0, 1) / (1, 2), which shifts the sampling grid
  by a pixel against the one imported torchvision weights were trained on (as in resnet.PAD3).
  """
  features: int
  kernel: int = 1
  stride: int = 1
  groups: int = 1
  act: Optional[Callable] = nn.relu6
  norm: Any = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    pad = ((self.kernel - 1) // 2,) * 2
    x = Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride), padding=(pad, pad),
             feature_group_count=self.groups, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
             name="conv")(x)
    x = self.norm(name="bn")(x)
    return x if self.act is None else self.act(x)


class InvertedResidual(nn.Module):
  """1x1 expand -> kxk depthwise -> (SE) -> 1x1 linear projection; identity shortcut when shapes match."""
  out: int
  expanded: int
  kernel: int
  stride: int
  act: Callable
  cba: Any                      # ConvBNAct with norm/dtypes bound
  se_gate: Optional[Callable] = None  # SE with this gate (V3), None: no SE

  @nn.compact
  def __call__(self, x):
    y = x
    if self.expanded != x.shape[-1]:
      y = self.cba(self.expanded, act=self.act, name="expand")(y)
    y = self.cba(self.expanded, self.kernel, self.stride, groups=self.expanded, act=self.act, name="dw")(y)
    if self.se_gate is not None:
      y = SqueezeExcite(make_divisible(self.expanded // 4), gate=self.se_gate, dtype=y.dtype, name="se")(y)
    y = self.cba(self.out, act=None, name="project")(y)
    return x + y if self.stride == 1 and x.shape[-1] == self.out else y


# MobileNetV2: (expansion t, channels c, repeats n, stride s)
V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))


class MobileNetV2(nn.Module):
  num_classes: int
  width_mult: float = 1.0
  dropout: float = 0.2
  stem: str = "auto"
  features: bool = False  # return {stride: map} (module docstring) instead of the logits
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    cba = functools.partial(ConvBNAct, norm=batch_norm(train, self.dtype, self.param_dtype), dtype=self.dtype,
                            param_dtype=self.param_dtype)
    small = pick_stem(self.stem, x) == "small"
    x = x.astype(self.dtype)
    scale = 1 if small else 2  # the stride reached so far
    x = cba(make_divisible(32 * self.width_mult), 3, scale, name="features_0")(x)
    index, first_stride, outputs = 1, True, {}
    for t, c, n, s in V2_SETTINGS:
      for j in range(n):
        stride = s if j == 0 else 1
        if stride == 2 and first_stride:
          first_stride, stride = False, 1 if small else 2
        x = InvertedResidual(make_divisible(c * self.width_mult), x.shape[-1] * t, 3, stride, nn.relu6, cba,
                             name=f"features_{index}")(x)
        scale *= stride
        outputs[scale] = x
        index += 1
    x = cba(make_divisible(1280 * max(1.0, self.width_mult)), name=f"features_{index}")(x)
    if self.features:
      return {**outputs, scale: x}
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="classifier")(x)
    return x.astype(jnp.float32)


# MobileNetV3: (kernel, expanded, out, SE, activation "RE"/"HS", stride)
V3_LARGE = ((3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
            (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
            (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
            (3, 184, 80, False, "HS", 1), (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
            (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1))
V3_SMALL = ((3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
            (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
            (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
            (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1))
ACTS = {"RE": nn.relu, "HS": jax.nn.hard_swish}


class MobileNetV3(nn.Module):
  num_classes: int
  size: str = "large"  # "large" | "small"
  width_mult: float = 1.0
  dropout: float = 0.2
  stem: str = "auto"
  features: bool = False  # return {stride: map} (module docstring) instead of the logits
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    settings, last = {"large": (V3_LARGE, 1280), "small": (V3_SMALL, 1024)}[self.size]
    norm = batch_norm(train, self.dtype, self.param_dtype, momentum=0.99, epsilon=1e-3)
    cba = functools.partial(ConvBNAct, norm=norm, dtype=self.dtype, param_dtype=self.param_dtype)
    ch = lambda c: make_divisible(c * self.width_mult)
    small = pick_stem(self.stem, x) == "small"
    x = x.astype(self.dtype)
    scale = 1 if small else 2  # the stride reached so far
    x = cba(ch(16), 3, scale, act=jax.nn.hard_swish, name="features_0")(x)
    first_stride, outputs = True, {}
    for i, (k, exp, out, se, act, stride) in enumerate(settings):
      if stride == 2 and first_stride:
        first_stride, stride = False, 1 if small else 2
      x = InvertedResidual(ch(out), ch(exp), k, stride, ACTS[act], cba, jax.nn.hard_sigmoid if se else None,
                           name=f"features_{i + 1}")(x)
      scale *= stride
      outputs[scale] = x
    x = cba(6 * x.shape[-1], act=jax.nn.hard_swish, name=f"features_{len(settings) + 1}")(x)
    if self.features:
      return {**outputs, scale: x}
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(ch(last), dtype=self.dtype, param_dtype=self.param_dtype, name="classifier_0")(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(jax.nn.hard_swish(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="classifier_3")(x)
    return x.astype(jnp.float32)


MODELS = {
    "mobilenet_v2": MobileNetV2,
    "mobilenet_v3_small": functools.partial(MobileNetV3, size="small"),
    "mobilenet_v3_large": functools.partial(MobileNetV3, size="large"),
}
