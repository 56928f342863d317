"""Segmentation models: a zoo backbone's multi-scale features -> a head on one of its maps -> class logits
upsampled (bilinear, half-pixel centres) to the input size, [N, H, W, K] float32.

Heads (config.segmentation.head):
  fcn    FCN's head (Long et al. 2015, as torchvision's FCNHead): 3x3 conv to `channels` + BatchNorm + relu,
         dropout, 1x1 conv to the classes
  aspp   DeepLabV3's (Chen et al. 2017): atrous spatial pyramid pooling (a 1x1 branch, a 3x3 branch per rate,
         image-level pooling; each conv + BatchNorm + relu), concatenated and projected by a 1x1 conv, dropout,
         then a 3x3 conv + BatchNorm + relu and a 1x1 conv to the classes

Backbones come from models.create_backbone: any family with a features mode ({stride: NHWC map}).
"""
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from imgrec import models
from imgrec.errors import UserError
from imgrec.models.layers import Conv

# Named backbones besides the zoo's: "tiny" is a one-block-per-stage ResNet 8 channels wide (tests, CPU demos).
BACKBONES = {"tiny": ("resnet18", {"stage_sizes": (1, 1, 1, 1), "width": 8})}
HEAD_KEYS = ("head", "feature_stride", "channels", "aspp_rates", "dropout")  # Segmenter fields from the config


def pick(maps, stride):
  """The map at `stride` (0: the deepest)."""
  if not stride:
    return maps[max(maps)]
  if stride not in maps:
    raise UserError(f"segmentation.feature_stride={stride}, but the backbone gives strides "
                    f"{', '.join(map(str, sorted(maps)))}; pick one of them or 0 (the deepest)")
  return maps[stride]


class Segmenter(nn.Module):
  backbone: Any              # models.create_backbone's: apply -> {stride: NHWC map}
  num_classes: int
  head: str = "fcn"
  feature_stride: int = 0
  channels: int = 0          # 0: a quarter of the map's channels (fcn), 256 (aspp)
  aspp_rates: Sequence[int] = (6, 12, 18)
  dropout: float = 0.1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    n, height, width = x.shape[:3]
    f = pick(self.backbone(x, train=train), self.feature_stride)
    conv = functools.partial(Conv, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    cbr = lambda y, c, k, name, rate=1: nn.relu(norm(name=f"{name}_bn")(
        conv(c, (k, k), kernel_dilation=(rate, rate), name=f"{name}_conv")(y)))
    if self.head == "fcn":
      y = cbr(f, self.channels or max(1, f.shape[-1] // 4), 3, "fcn")
    elif self.head == "aspp":
      c = self.channels or 256
      branches = [cbr(f, c, 1, "aspp0")] + [cbr(f, c, 3, f"aspp{i + 1}", int(r)) for i, r in enumerate(self.aspp_rates)]
      pooled = cbr(jnp.mean(f, axis=(1, 2), keepdims=True), c, 1, "aspp_pool")
      branches.append(jnp.broadcast_to(pooled, f.shape[:3] + (c,)))
      y = cbr(jnp.concatenate(branches, -1), c, 1, "aspp_project")
      y = nn.Dropout(0.5 if self.dropout else 0.0, deterministic=not train)(y)
      y = cbr(y, c, 3, "head")
    else:
      raise UserError(f"segmentation.head must be fcn or aspp, got {self.head!r}")
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    logits = Conv(self.num_classes, (1, 1), dtype=self.dtype, param_dtype=self.param_dtype, name="classifier")(y)
    logits = logits.astype(jnp.float32)
    return jax.image.resize(logits, (n, height, width, self.num_classes), "bilinear")


def create(name, num_classes, dtype=jnp.float32, head=None, **backbone_kwargs):
  """A segmenter on the zoo backbone `name` (resnet50, convnext_tiny, vit_s16, ... or "tiny") in its features
  mode; `head`: Segmenter fields (HEAD_KEYS); `backbone_kwargs` go to the zoo constructor (config.model.kwargs)."""
  zoo_name, preset = BACKBONES.get(name, (name, {}))
  backbone = models.create_backbone(zoo_name, dtype=dtype, **{**preset, **backbone_kwargs})
  head = dict(head or {})
  if "aspp_rates" in head:
    head["aspp_rates"] = tuple(head["aspp_rates"])
  return Segmenter(backbone, num_classes, dtype=dtype, **head)
