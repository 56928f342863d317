"""FCOS (Tian et al. 2019, with its v2 practice: centerness on the regression tower, centre sampling, GroupNorm
heads): a zoo backbone's multi-scale features (models.create_backbone: ResNet, ConvNeXt, ViT, EfficientNet,
MobileNet) -> a light FPN (P3..P5 from the backbone, P6/P7 by stride-2 convs) ->
shared conv towers -> per point, class logits, ltrb distances and a centerness logit.

Outputs are flattened over the levels (level by level, row-major within a level) so that everything
downstream has static shapes: {"logits" [N, P, C], "ltrb" [N, P, 4] (positive, in pixels), "centerness"
[N, P], "points" [N, P, 3] (x, y, stride of each point; the same for every image, constant)}. `points(h, w,
levels)` gives that table for an image size as numpy.
"""
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imgrec import models
from imgrec.errors import UserError
from imgrec.models.layers import Conv

# Named backbones besides the zoo's: "tiny" is a one-block-per-stage ResNet 8 channels wide (tests, CPU demos).
BACKBONES = {"tiny": ("resnet18", {"stage_sizes": (1, 1, 1, 1), "width": 8})}
# ltrb = exp(scale * t) * stride; the exponent is capped so that an early bad step cannot overflow.
MAX_EXP = 10.0


def level_size(size, level):
  """Feature-map size at stride 2**level: every stride-2 op pads to keep ceil(size / 2)."""
  return -(-size // 2**level)


def points(height, width, levels):
  """[P, 3] float32: the (x, y) centre of every feature cell of every level, and its stride."""
  out = []
  for level in levels:
    s = 2**level
    ys, xs = np.meshgrid(np.arange(level_size(height, level)), np.arange(level_size(width, level)), indexing="ij")
    out.append(np.stack([(xs.ravel() + 0.5) * s, (ys.ravel() + 0.5) * s, np.full(xs.size, s)], 1))
  return np.concatenate(out).astype(np.float32)


def _groups(channels):
  return math.gcd(32, channels)  # GroupNorm's 32 groups, fewer for narrow test heads


class FCOS(nn.Module):
  backbone: Any                      # a zoo module in features mode (models.create_backbone): {stride: map}
  num_classes: int
  fpn_channels: int = 256
  levels: Sequence[int] = (3, 4, 5, 6, 7)  # strides 2**level; those past the backbone come from stride-2 convs
  head_convs: int = 4                # conv + GroupNorm + relu layers in each tower
  prior_prob: float = 0.01           # initial class probability (focal-loss practice: few false alarms at start)
  # Decoding settings (decode.decode), unused by __call__: they travel with the model so that evaluation and
  # serving decode as the config says.
  num_detections: int = 100
  pre_nms_topk: int = 1000
  nms_iou: float = 0.6
  score_threshold: float = 0.05
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    n, height, width = x.shape[:3]
    conv = functools.partial(Conv, dtype=self.dtype, param_dtype=self.param_dtype)
    feats = {round(math.log2(s)): f for s, f in self.backbone(x, train=train).items()}
    top = max(feats)
    lo = min(self.levels)
    if lo not in feats or top < lo:
      raise UserError(f"detection.levels {tuple(self.levels)} start at stride {2**lo}, which the backbone "
                      f"does not give (its strides: {sorted(2**k for k in feats)}); use levels from 3")
    for level in range(lo, top + 1):
      got, want = feats[level].shape[1:3], (level_size(height, level), level_size(width, level))
      if got != want:  # `points` would not line up with the maps
        raise UserError(f"the backbone's stride-{2**level} map is {got[0]}x{got[1]} for {height}x{width} images, "
                        f"where FCOS needs ceil(size / {2**level}) = {want[0]}x{want[1]}; use image sides that "
                        f"are multiples of {2**top} (the letterbox size in data.pp_train / pp_eval)")
    # FPN: 1x1 laterals, top-down nearest upsampling, 3x3 output convs.
    pyramid = {}
    inner = None
    for level in range(top, lo - 1, -1):
      lateral = conv(self.fpn_channels, (1, 1), name=f"lateral{level}")(feats[level])
      if inner is not None:
        lateral = lateral + jax.image.resize(inner, lateral.shape, "nearest").astype(lateral.dtype)
      inner = lateral
      pyramid[level] = conv(self.fpn_channels, (3, 3), name=f"fpn{level}")(inner)
    for level in range(top + 1, max(self.levels) + 1):
      prev = pyramid[level - 1] if level - 1 > top else pyramid[top]
      prev = nn.relu(prev) if level - 1 > top else prev
      pyramid[level] = conv(self.fpn_channels, (3, 3), (2, 2), padding=((1, 1), (1, 1)), name=f"extra{level}")(prev)

    def tower(name):
      layers = [(conv(self.fpn_channels, (3, 3), name=f"{name}_conv{i}"),
                 nn.GroupNorm(_groups(self.fpn_channels), dtype=self.dtype, param_dtype=self.param_dtype,
                              name=f"{name}_gn{i}")) for i in range(self.head_convs)]

      def apply(y):
        for c, gn in layers:
          y = nn.relu(gn(c(y)))
        return y
      return apply

    cls_tower, reg_tower = tower("cls"), tower("reg")
    prior = -math.log((1 - self.prior_prob) / self.prior_prob)
    cls_out = conv(self.num_classes, (3, 3), bias_init=nn.initializers.constant(prior), name="cls_logits")
    box_out = conv(4, (3, 3), name="box_ltrb")
    ctr_out = conv(1, (3, 3), name="centerness")
    logits, ltrb, ctr = [], [], []
    for level in self.levels:
      p = pyramid[level]
      c, r = cls_tower(p), reg_tower(p)
      scale = self.param(f"scale{level}", nn.initializers.ones, (), self.param_dtype)
      t = box_out(r).astype(jnp.float32) * scale
      flat = lambda a: a.reshape(n, -1, a.shape[-1]).astype(jnp.float32)
      logits.append(flat(cls_out(c)))
      ltrb.append(flat(jnp.exp(jnp.minimum(t, MAX_EXP)) * 2.0**level))
      ctr.append(flat(ctr_out(r))[..., 0])
    table = jnp.asarray(points(height, width, self.levels))
    return {"logits": jnp.concatenate(logits, 1), "ltrb": jnp.concatenate(ltrb, 1),
            "centerness": jnp.concatenate(ctr, 1), "points": jnp.broadcast_to(table, (n,) + table.shape)}


HEAD_KEYS = ("fpn_channels", "levels", "head_convs", "prior_prob", "num_detections", "pre_nms_topk", "nms_iou",
             "score_threshold")  # the FCOS fields set from config.detection


def create(name, num_classes, dtype=jnp.float32, head=None, **backbone_kwargs):
  """An FCOS detector on the zoo backbone `name` (resnet50, convnext_tiny, vit_s16, efficientnet_b0,
  mobilenet_v3_large, ... or "tiny"; models.create_backbone). `head`: FCOS fields (HEAD_KEYS);
  `backbone_kwargs` go to the zoo constructor (config.model.kwargs)."""
  zoo_name, preset = BACKBONES.get(name, (name, {}))
  backbone = models.create_backbone(zoo_name, dtype=dtype, **{**preset, **backbone_kwargs})
  head = dict(head or {})
  if "levels" in head:
    head["levels"] = tuple(head["levels"])
  return FCOS(backbone, num_classes, dtype=dtype, **head)
