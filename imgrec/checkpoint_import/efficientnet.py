"""EfficientNet-B0..B3 checkpoints onto imgrec's EfficientNet (imgrec/models/efficientnet.py), from timm's
`efficientnet_b*` (conv_stem, bn1, blocks.{s}.{j}.{conv_pw,bn1,conv_dw,bn2,se.conv_reduce,se.conv_expand,conv_pwl,
bn3}, conv_head, bn2, classifier; stage 0's depthwise-separable block: conv_dw, bn1, se, conv_pw, bn2) or
torchvision's (features.{s}.{j}.block.{k}...). Both pad (k-1)/2 like imgrec's `stem="imagenet"` model; timm's
`tf_efficientnet_*` (TensorFlow "SAME" padding, BatchNorm eps 1e-3) is another network and is refused.
"""
import math
import re

from imgrec.checkpoint_import.mapping import split, torch_leaf
from imgrec.errors import UserError
from imgrec.models import efficientnet as zoo
from imgrec.models.blocks import make_divisible

CBA = {"conv": "0", "bn": "1"}  # torchvision's Conv2dNormActivation is Sequential(conv, norm, act)


def layout(keys):
  if "conv_stem.weight" in keys and "blocks.0.0.conv_dw.weight" in keys:
    return "timm"
  if "features.1.0.block.0.0.weight" in keys:
    return "torchvision"
  return None


def rename(key):
  return key


def arch(source, layout_, model=None):
  s = source.shapes
  if layout_ == "timm":
    repeats = tuple(len({k.split(".")[2] for k in s if k.startswith(f"blocks.{i}.")}) for i in range(7))
    stem, head = s["conv_stem.weight"][0], "classifier.weight"
  else:
    repeats = tuple(len({k.split(".")[2] for k in s if k.startswith(f"features.{i}.")}) for i in range(1, 8))
    stem, head = s["features.0.0.weight"][0], "classifier.1.weight"
  found = None
  for key, (w, d, _) in zoo.SCALING.items():
    if make_divisible(32 * w) == stem and repeats == tuple(int(math.ceil(n * d)) for *_, n in zoo.STAGES):
      found = f"efficientnet_{key}"
  name = model or found
  if name is None or name not in zoo.MODELS:
    raise UserError(f"{source.path}: an EfficientNet with stem width {stem} and blocks {repeats} is none of imgrec's "
                    f"{', '.join(zoo.MODELS)}" + (f" (--model {model})" if model else ""))
  classes = s[head][0] if head in s else None
  return name, {"stem": "imagenet"}, None if classes is None else int(classes), 224


def rule(layout_, name, target, shapes):
  path, leaf = split(name)
  t = lambda prefix: torch_leaf(prefix, leaf, len(target[name]))
  if layout_ == "torchvision":
    if path == "classifier":
      return t("classifier.1")
    block, part, sub = (path.split("/") + [None])[:3]
    m = re.fullmatch(r"features_(\d+)_(\d+)", block)
    if not m:  # first and last layers: one Conv2dNormActivation
      return t(f"{block.replace('_', '.')}.{CBA[part]}")
    order = (["expand"] if f"params/{block}/expand/conv/kernel" in target else []) + ["dw", "se", "project"]
    prefix = f"features.{m[1]}.{m[2]}.block.{order.index(part)}"  # MBConv.block = [expand], dw, se, project
    return t(f"{prefix}.{sub}" if part == "se" else f"{prefix}.{CBA[sub]}")
  top = {"features_0/conv": "conv_stem", "features_0/bn": "bn1", "features_8/conv": "conv_head", "features_8/bn": "bn2",
         "classifier": "classifier"}
  if path in top:
    return t(top[path])
  m = re.fullmatch(r"features_(\d+)_(\d+)/(\w+)/(\w+)", path)
  stage, j, part, sub = int(m[1]) - 1, m[2], m[3], m[4]
  prefix = f"blocks.{stage}.{j}"
  if part == "se":
    return t(f"{prefix}.se.{ {'fc1': 'conv_reduce', 'fc2': 'conv_expand'}[sub]}")
  expanded = f"params/{path.split('/')[0]}/expand/conv/kernel" in target
  names = ({"expand": ("conv_pw", "bn1"), "dw": ("conv_dw", "bn2"), "project": ("conv_pwl", "bn3")} if expanded else
           {"dw": ("conv_dw", "bn1"), "project": ("conv_pw", "bn2")})  # timm's DepthwiseSeparableConv
  return t(f"{prefix}.{names[part][0 if sub == 'conv' else 1]}")
