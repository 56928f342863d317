"""ResNet checkpoints (v1.5: stride in the 3x3 conv) onto imgrec's ResNet (imgrec/models/resnet.py).

timm's `resnet*` and torchvision's share one layout: conv1, bn1, layer{1-4}.{j}.{conv,bn}{1-3} with
downsample.{0,1}, fc; imgrec's stem_conv, stem_bn, stage{i}_block{j}/..., proj_conv / proj_bn, head.
The depth comes from the number of blocks per stage and the block kind from conv3's presence; the model runs
with the strided ImageNet stem (`stem="imagenet"`), which these weights were trained with.
"""
import re

from imgrec.checkpoint_import.mapping import split, torch_leaf
from imgrec.errors import UserError
from imgrec.models import resnet as zoo


def layout(keys):
  return "torch" if "layer1.0.conv1.weight" in keys and "conv1.weight" in keys else None


def rename(key):
  return key


def arch(source, layout_, model=None):
  s = source.shapes
  stages = tuple(len({k.split(".")[1] for k in s if k.startswith(f"layer{i}.")}) for i in range(1, 5))
  block = "bottleneck" if "layer1.0.conv3.weight" in s else "basic"
  found = next((f"resnet{d}" for d, (st, b) in zoo.DEPTHS.items() if st == stages and b == block), None)
  name = model or found
  if name is None:
    raise UserError(f"{source.path}: a ResNet of {block} blocks {stages} is none of imgrec's resnet18/34/50/101/152")
  if name not in zoo.MODELS:
    raise UserError(f"--model {model!r} is not a ResNet; this checkpoint is a ResNet ({found or stages})")
  kwargs = {"stem": "imagenet"}
  width = s["conv1.weight"][0]
  if width != 64:
    kwargs["width"] = int(width)
  classes = s["fc.weight"][0] if "fc.weight" in s else None
  return name, kwargs, None if classes is None else int(classes), 224


def rule(layout_, name, target, shapes):
  path, leaf = split(name)
  m = re.fullmatch(r"stage(\d+)_block(\d+)/(\w+)", path)
  if m:
    part = {"proj_conv": "downsample.0", "proj_bn": "downsample.1"}.get(m[3], m[3])
    prefix = f"layer{m[1]}.{int(m[2]) - 1}.{part}"
  else:
    prefix = {"stem_conv": "conv1", "stem_bn": "bn1", "head": "fc"}.get(path, path)
  return torch_leaf(prefix, leaf, len(target[name]))
