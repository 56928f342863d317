"""ConvNeXt (Liu et al. 2022): T / S / B / L at the published sizes.

A 4x4 stride-4 "patchify" stem, then four stages of blocks: depthwise 7x7 conv -> LayerNorm -> Linear 4x ->
GELU (exact, as the reference) -> Linear -> layer scale (init 1e-6), plus the identity, with stochastic depth
growing linearly to `drop_path_rate`. Between stages a LayerNorm and a 2x2 stride-2 conv; at the end a global
mean, a LayerNorm and the head. LayerNorms use eps 1e-6 as the reference (`head_norm_eps`: Hugging Face's
ConvNeXt uses its `layer_norm_eps`, 1e-12 by default, for the last one only).

Names: `stem_conv`, `stem_ln`, `stage{i}_down_ln` / `stage{i}_down_conv` (i > 1), `stage{i}_block{j}` with
`dw_conv`, `ln`, `fc1`, `fc2`, `layer_scale`, then `head_ln`, `head` (imgrec/checkpoint_import maps timm's and
Hugging Face's names onto these).

`features=True` (models.create_backbone) returns {4, 8, 16, 32: each stage's output}, each through a LayerNorm of
its own, `stage{i}_out_ln`, as the paper's detection and segmentation backbones do: the residual stream is not
normalised, and `head_ln` sees only its global mean. No head parameters are created then.
"""
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from imgrec.models.blocks import drop_path
from imgrec.models.layers import Conv

# name: (blocks per stage, channels per stage)
SIZES = {"tiny": ((3, 3, 9, 3), (96, 192, 384, 768)), "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
         "base": ((3, 3, 27, 3), (128, 256, 512, 1024)), "large": ((3, 3, 27, 3), (192, 384, 768, 1536))}


class Block(nn.Module):
  drop_path: float = 0.0
  train: bool = False
  layer_scale_init: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    c = x.shape[-1]
    y = Conv(c, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=c, name="dw_conv", **kw)(x)
    y = nn.LayerNorm(1e-6, name="ln", **kw)(y)
    y = nn.gelu(nn.Dense(4 * c, name="fc1", **kw)(y), approximate=False)
    y = nn.Dense(c, name="fc2", **kw)(y)
    gamma = self.param("layer_scale", nn.initializers.constant(self.layer_scale_init), (c,), self.param_dtype)
    return x + drop_path(self, y * gamma.astype(y.dtype), self.drop_path, self.train)


class ConvNeXt(nn.Module):
  num_classes: int
  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  width: Optional[int] = None  # set: the first stage's channels, each next stage doubling them (as ResNet's
                               # `width`), in place of `dims`
  features: bool = False  # return {stride: each stage's output} instead of the logits
  drop_path_rate: float = 0.0
  layer_scale_init: float = 1e-6
  head_norm_eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    dims = self.dims if self.width is None else tuple(self.width * 2**i for i in range(len(self.depths)))
    x = Conv(dims[0], (4, 4), (4, 4), padding="VALID", name="stem_conv", **kw)(x)
    x = nn.LayerNorm(1e-6, name="stem_ln", **kw)(x)
    total, index, outputs = sum(self.depths), 0, {}
    for i, (n, dim) in enumerate(zip(self.depths, dims)):
      if i > 0:
        x = nn.LayerNorm(1e-6, name=f"stage{i + 1}_down_ln", **kw)(x)
        x = Conv(dim, (2, 2), (2, 2), padding="VALID", name=f"stage{i + 1}_down_conv", **kw)(x)
      for j in range(n):
        rate = self.drop_path_rate * index / max(1, total - 1)
        x = Block(rate, train, self.layer_scale_init, name=f"stage{i + 1}_block{j + 1}", **kw)(x)
        index += 1
      if self.features:
        outputs[4 * 2**i] = nn.LayerNorm(1e-6, name=f"stage{i + 1}_out_ln", **kw)(x)
    if self.features:
      return outputs
    x = nn.LayerNorm(self.head_norm_eps, name="head_ln", **kw)(jnp.mean(x, axis=(1, 2)))
    x = nn.Dense(self.num_classes, name="head", **kw)(x)
    return x.astype(jnp.float32)


MODELS = {f"convnext_{k}": functools.partial(ConvNeXt, depths=d, dims=c) for k, (d, c) in SIZES.items()}
