"""EfficientNet-B0..B3 (Tan & Le 2019): MBConv blocks with squeeze-and-excitation, swish (SiLU)
and stochastic depth, compound-scaled in width and depth. Laid out as torchvision's
(`features_{stage}_{block}` with `expand` / `dw` / `se` / `project` parts).

Stochastic depth grows linearly with the block index up to `drop_path_rate` (0.2).
The "small" stem (auto at <= 64 px) keeps stride 1 in the stem and the first strided stage.

`features=True` (models.create_backbone) returns {stride: the last block's output at each stride}, the last
1x1 conv (`features_8`) included at the deepest stride: on the ImageNet stem strides 2 to 32. No classifier
parameters are created then.
"""
import functools
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from imgrec.models.blocks import SqueezeExcite, batch_norm, drop_path, make_divisible, pick_stem
from imgrec.models.mobilenet import ConvBNAct

# (expansion, kernel, stride, out channels, repeats) of the seven B0 stages
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
          (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
# name: (width multiplier, depth multiplier, dropout before the classifier)
SCALING = {"b0": (1.0, 1.0, 0.2), "b1": (1.0, 1.1, 0.2), "b2": (1.1, 1.2, 0.3), "b3": (1.2, 1.4, 0.3)}


class MBConv(nn.Module):
  out: int
  expansion: int
  kernel: int
  stride: int
  cba: Any
  drop_path: float = 0.0
  train: bool = False

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    expanded = cin * self.expansion
    y = x
    if self.expansion != 1:
      y = self.cba(expanded, name="expand")(y)
    y = self.cba(expanded, self.kernel, self.stride, groups=expanded, name="dw")(y)
    y = SqueezeExcite(max(1, cin // 4), act=nn.silu, dtype=y.dtype, name="se")(y)
    y = self.cba(self.out, act=None, name="project")(y)
    if self.stride == 1 and cin == self.out:
      return x + drop_path(self, y, self.drop_path, self.train)
    return y


class EfficientNet(nn.Module):
  num_classes: int
  width_mult: float = 1.0
  depth_mult: float = 1.0
  dropout: float = 0.2
  drop_path_rate: float = 0.2
  stem: str = "auto"
  features: bool = False  # return {stride: map} (module docstring) instead of the logits
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    cba = functools.partial(ConvBNAct, norm=batch_norm(train, self.dtype, self.param_dtype), act=nn.silu,
                            dtype=self.dtype, param_dtype=self.param_dtype)
    ch = lambda c: make_divisible(c * self.width_mult)
    small = pick_stem(self.stem, x) == "small"
    x = x.astype(self.dtype)
    scale = 1 if small else 2  # the stride reached so far
    x = cba(ch(32), 3, scale, name="features_0")(x)
    repeats = [int(math.ceil(n * self.depth_mult)) for *_, n in STAGES]
    total, index, first_stride, outputs = sum(repeats), 0, True, {}
    for stage, ((t, k, s, c, _), n) in enumerate(zip(STAGES, repeats)):
      for j in range(n):
        stride = s if j == 0 else 1
        if stride == 2 and first_stride:
          first_stride, stride = False, 1 if small else 2
        x = MBConv(ch(c), t, k, stride, cba, self.drop_path_rate * index / total, train,
                   name=f"features_{stage + 1}_{j}")(x)
        scale *= stride
        outputs[scale] = x
        index += 1
    x = cba(4 * x.shape[-1], name=f"features_{len(STAGES) + 1}")(x)
    if self.features:
      return {**outputs, scale: x}
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="classifier")(x)
    return x.astype(jnp.float32)


MODELS = {f"efficientnet_{k}": functools.partial(EfficientNet, width_mult=w, depth_mult=d, dropout=p)
          for k, (w, d, p) in SCALING.items()}
