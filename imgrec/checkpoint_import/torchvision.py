"""torchvision's VGG-16(-BN) and MobileNetV2 state_dicts onto imgrec's vgg16(_bn) and mobilenet_v2 (the other
torchvision models, ResNet, EfficientNet and ViT, are layouts of their family modules here).

VGG's first classifier layer also reorders its inputs: torch flattens the 7x7 map as C,H,W, imgrec as H,W,C.
"""
import numpy as np

from imgrec.checkpoint_import.mapping import Rule, split, torch_leaf
from imgrec.errors import UserError

CBA = {"conv": "0", "bn": "1"}  # torchvision's Conv2dNormActivation is Sequential(conv, norm, act)


def layout(keys):
  if "classifier.6.weight" in keys and "features.0.weight" in keys:
    return "vgg"
  if "features.1.conv.0.0.weight" in keys and "classifier.1.weight" in keys:
    return "mobilenet_v2"
  return None


def rename(key):
  return key


def arch(source, layout_, model=None):
  s = source.shapes
  if layout_ == "vgg":
    convs = sum(1 for k, v in s.items() if k.startswith("features.") and k.endswith(".weight") and len(v) == 4)
    if convs != 13:
      raise UserError(f"{source.path}: a VGG with {convs} convolutions; imgrec imports torchvision's vgg16(_bn) (13)")
    name = "vgg16_bn" if "features.1.running_var" in s else "vgg16"
    classes = s["classifier.6.weight"][0]
  else:
    name, classes = "mobilenet_v2", s["classifier.1.weight"][0]
  if model and model != name:
    raise UserError(f"{source.path} is a torchvision {name} state_dict, not {model}")
  return name, ({"stem": "imagenet"} if name == "mobilenet_v2" else {}), int(classes), 224


def _linear_chw(w):
  """torch Linear weight (out, C*7*7) reading a flattened (C, 7, 7) map -> Dense kernel (7*7*C, out), 256 outputs
  at a time (for VGG's 102M-value layer 2-4x faster than one whole-matrix transpose)."""
  out, n = w.shape
  c = n // 49
  kernel = np.empty((n, out), np.float32)
  view = kernel.reshape(7, 7, c, out)
  for i in range(0, out, 256):
    view[..., i:i + 256] = w[i:i + 256].reshape(-1, c, 7, 7).transpose(2, 3, 1, 0)
  return kernel


def rule(layout_, name, target, shapes):
  path, leaf = split(name)
  t = lambda prefix: torch_leaf(prefix, leaf, len(target[name]))
  if layout_ == "vgg":
    prefix = path.replace("_", ".")  # features_17 -> features.17, classifier_6 -> classifier.6
    if prefix == "classifier.0" and leaf == "kernel":
      return Rule(("classifier.0.weight",), _linear_chw)
    return t(prefix)
  if path == "classifier":
    return t("classifier.1")
  block, *rest = path.split("/")
  prefix = block.replace("_", ".")
  if len(rest) == 1:  # first and last layers: one Conv2dNormActivation
    return t(f"{prefix}.{CBA[rest[0]]}")
  part, sub = rest  # InvertedResidual.conv = [expand (CBA)], dw (CBA), project conv, project bn
  order = (["expand"] if f"params/{block}/expand/conv/kernel" in target else []) + ["dw"]
  if part == "project":
    return t(f"{prefix}.conv.{len(order) + int(CBA[sub])}")
  return t(f"{prefix}.conv.{order.index(part)}.{CBA[sub]}")


