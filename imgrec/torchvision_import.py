"""Converters from torchvision `state_dict` files to imgrec parameters (by name).

  imgrec import-torchvision ARCH weights.pth --workdir W
  imgrec train --config.model.name=MODEL [--config.model.kwargs.KEY=VALUE ...] --config.transfer.init_from=W ...

writes W/params.npz ({"params/...", "batch_stats/..."} by imgrec name) and W/import.json, which names
the imgrec model and the options under which it computes what torchvision's model computes:

  ARCH                       MODEL             kwargs
  resnet18/34/50             (same)            stem="imagenet"
  vgg16, vgg16_bn            (same)            (none)
  mobilenet_v2               mobilenet_v2      stem="imagenet"
  efficientnet_b0            efficientnet_b0   stem="imagenet"
  vit_b_16                   vit_b16           gelu_approximate=False

(`stem="imagenet"` keeps torchvision's strided stem on small images too, where "auto" would drop it;
torchvision's GELU is the exact erf form, Flax's default the tanh approximation.) BatchNorm needs no
option: torchvision's momentum 0.1 is Flax's 0.9, and eps is 1e-5 in all of these (EfficientNet B5+
and V2 would need 1e-3).

How: the imgrec model is built abstractly (`jax.eval_shape`) and each of its parameter names is
translated into torchvision's key by a small per-architecture function below; values change layout
(conv OIHW -> HWIO, linear (out, in) -> (in, out); VGG's first classifier layer also reorders its
inputs: torch flattens the 7x7 map as C,H,W, imgrec as H,W,C). A key that is missing, has a shape
the model cannot take, or is left over raises UserError naming it. Needs torch (the optional extra
`imgrec[torch]`) only to read the .pth file; the conversion is numpy.
"""
import json
import math
import os
import re

import jax
import numpy as np

from imgrec import files, models, workdir as wd
from imgrec.errors import UserError

LEAF = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean", "var": "running_var"}
CBA = {"conv": "0", "bn": "1"}  # torchvision's Conv2dNormActivation is Sequential(conv, norm, act)


def _resnet(path, leaf, names):
  m = re.fullmatch(r"stage(\d+)_block(\d+)/(\w+)", path)
  if m:
    part = {"proj_conv": "downsample.0", "proj_bn": "downsample.1"}.get(m[3], m[3])
    return f"layer{m[1]}.{int(m[2]) - 1}.{part}.{LEAF[leaf]}"
  return {"stem_conv": "conv1", "stem_bn": "bn1", "head": "fc"}[path] + "." + LEAF[leaf]


def _linear(w, chw=None):
  """torch Linear weight (out, in) -> Dense kernel (in, out), 256 outputs at a time (for VGG's
  102M-value layer 2-4x faster than one whole-matrix transpose). `chw`: the input is a flattened
  (C, H, W) map, which imgrec flattens as (H, W, C)."""
  out, n = w.shape
  c, h, wd = chw or (n, 1, 1)
  kernel = np.empty((n, out), np.float32)
  view = kernel.reshape(h, wd, c, out)
  for i in range(0, out, 256):
    view[..., i:i + 256] = w[i:i + 256].reshape(-1, c, h, wd).transpose(2, 3, 1, 0)
  return kernel


def _vgg(path, leaf, names):
  key = path.replace("_", ".") + "." + LEAF[leaf]  # features_17 -> features.17, classifier_6 -> classifier.6
  if key == "classifier.0.weight":  # reads torch.flatten of the (512, 7, 7) pooled map
    return key, lambda w: _linear(w, (w.shape[1] // 49, 7, 7))
  return key


def _mobilenet_v2(path, leaf, names):
  if path == "classifier":
    return f"classifier.1.{LEAF[leaf]}"
  block, *rest = path.split("/")
  prefix = block.replace("_", ".")
  if len(rest) == 1:  # first and last layers: one Conv2dNormActivation
    return f"{prefix}.{CBA[rest[0]]}.{LEAF[leaf]}"
  part, sub = rest  # InvertedResidual.conv = [expand (CBA)], dw (CBA), project conv, project bn
  order = (["expand"] if f"params/{block}/expand/conv/kernel" in names else []) + ["dw"]
  if part == "project":
    return f"{prefix}.conv.{len(order) + int(CBA[sub])}.{LEAF[leaf]}"
  return f"{prefix}.conv.{order.index(part)}.{CBA[sub]}.{LEAF[leaf]}"


def _efficientnet(path, leaf, names):
  if path == "classifier":
    return f"classifier.1.{LEAF[leaf]}"
  block, part, sub = (path.split("/") + [None])[:3]
  m = re.fullmatch(r"features_(\d+)_(\d+)", block)
  if not m:  # first and last layers: one Conv2dNormActivation
    return f"{block.replace('_', '.')}.{CBA[part]}.{LEAF[leaf]}"
  order = (["expand"] if f"params/{block}/expand/conv/kernel" in names else []) + ["dw", "se", "project"]
  prefix = f"features.{m[1]}.{m[2]}.block.{order.index(part)}"  # MBConv.block = [expand], dw, se, project
  return f"{prefix}.{sub}.{LEAF[leaf]}" if part == "se" else f"{prefix}.{CBA[sub]}.{LEAF[leaf]}"


def _vit(path, leaf, names):
  if path == "":
    return {"class_token": "class_token", "pos_embedding": "encoder.pos_embedding"}[leaf]
  m = re.fullmatch(r"encoder_layer_(\d+)/(.+)", path)
  if not m:
    return {"conv_proj": "conv_proj", "encoder_ln": "encoder.ln", "head": "heads.head"}[path] + "." + LEAF[leaf]
  prefix, part = f"encoder.layers.encoder_layer_{m[1]}", m[2]
  if part == "self_attention/in_proj":  # nn.MultiheadAttention keeps q, k, v stacked in one matrix
    return f"{prefix}.self_attention.in_proj_{LEAF[leaf]}"
  return f"{prefix}.{part.replace('/', '.').replace('mlp_', 'mlp.')}.{LEAF[leaf]}"


# torchvision name -> (imgrec model, model kwargs, key of torchvision's classifier bias, name translator)
ARCHS = {
    "resnet18": ("resnet18", {"stem": "imagenet"}, "fc.bias", _resnet),
    "resnet34": ("resnet34", {"stem": "imagenet"}, "fc.bias", _resnet),
    "resnet50": ("resnet50", {"stem": "imagenet"}, "fc.bias", _resnet),
    "vgg16": ("vgg16", {}, "classifier.6.bias", _vgg),
    "vgg16_bn": ("vgg16_bn", {}, "classifier.6.bias", _vgg),
    "mobilenet_v2": ("mobilenet_v2", {"stem": "imagenet"}, "classifier.1.bias", _mobilenet_v2),
    "efficientnet_b0": ("efficientnet_b0", {"stem": "imagenet"}, "classifier.1.bias", _efficientnet),
    "vit_b_16": ("vit_b16", {"gelu_approximate": False}, "heads.head.bias", _vit),
}


def _torch_shape(shape, leaf):
  """The torch shape of a parameter whose imgrec shape is `shape`."""
  if leaf == "kernel" and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])  # HWIO -> OIHW
  if leaf == "kernel" and len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)


def _layout(value, leaf):
  if leaf == "kernel" and value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))
  if leaf == "kernel" and value.ndim == 2:
    return _linear(value)
  return value


def _target(arch, sd):
  """(model name, kwargs, num_classes, image size, {imgrec name: shape}) for `arch` and state_dict `sd`."""
  name, kwargs, head, _ = ARCHS[arch]
  if head not in sd:
    raise UserError(f"key {head!r} missing: not a torchvision {arch} state_dict (it has e.g. "
                    f"{', '.join(list(sd)[:3])})")
  num_classes, size = int(sd[head].shape[0]), 224
  if arch.startswith("vit"):  # the position embedding fixes the image size: 1 + (size / 16)^2 tokens
    pos = sd.get("encoder.pos_embedding")
    grid = math.isqrt(pos.shape[1] - 1) if pos is not None and pos.ndim == 3 else 0
    if grid == 0 or grid * grid != pos.shape[1] - 1:
      raise UserError(f"key 'encoder.pos_embedding' missing or not (1, 1 + n*n, D): not a torchvision {arch} "
                      "state_dict")
    size = grid * 16
  model = models.create(name, num_classes, **kwargs)
  x = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  return name, kwargs, num_classes, size, {k: tuple(v.shape) for k, v in wd.flatten(shapes).items()}


def convert(arch, sd):
  """torchvision `arch` state_dict (name -> array) -> ({imgrec name: float32 array}, import info dict)."""
  if arch not in ARCHS:
    raise UserError(f"no converter for {arch!r}; supported: {', '.join(ARCHS)}")
  sd = {k: np.asarray(v, np.float32) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
  model, kwargs, num_classes, size, target = _target(arch, sd)
  translate, out, used = ARCHS[arch][3], {}, set()
  for name, shape in target.items():
    path, leaf = name.split("/", 1)[1].rpartition("/")[::2]
    key = translate(path, leaf, target)
    key, fn = key if isinstance(key, tuple) else (key, lambda v: _layout(v, leaf))
    if key not in sd:
      raise UserError(f"key {key!r} missing: not a torchvision {arch} state_dict (imgrec {name} needs it)")
    want = _torch_shape(shape, leaf)
    if sd[key].shape != want:
      raise UserError(f"key {key!r} has shape {tuple(sd[key].shape)}, torchvision {arch} has {want} "
                      f"(for imgrec {name}); is it another architecture or width?")
    out[name] = np.ascontiguousarray(fn(sd[key]))
    used.add(key)
  extra = sorted(set(sd) - used)
  if extra:
    raise UserError(f"{len(extra)} key(s) that torchvision {arch} does not have, e.g. {', '.join(extra[:3])}; "
                    "is it another architecture (or a model with a different head)?")
  info = {"arch": arch, "num_classes": num_classes, "image_size": size, "model": {"name": model, "kwargs": kwargs}}
  return out, info


def read_state_dict(path):
  """A .pth state_dict as numpy arrays (needs torch)."""
  try:
    import torch
  except ImportError:
    raise UserError("reading a .pth file needs torch: pip install 'imgrec[torch]' (CPU wheel is enough)") from None
  if not os.path.isfile(path):
    raise UserError(f"weights file {path} not found")
  try:
    sd = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for bad files
    raise UserError(f"cannot read {path} as a torch state_dict: {type(e).__name__}: {e}") from None
  if isinstance(sd, dict) and "state_dict" in sd:
    sd = sd["state_dict"]
  if not isinstance(sd, dict) or not all(hasattr(v, "detach") for v in sd.values()):
    raise UserError(f"{path} holds no state_dict (a dict of tensors); save one with torch.save(model.state_dict())")
  return {k: v.detach().cpu().numpy() for k, v in sd.items()}


def import_torchvision(arch, weights, workdir):
  """Converts `weights` (.pth) of torchvision `arch` into `workdir/params.npz` and `import.json`;
  returns (flat {imgrec name: array}, info {"model": {"name", "kwargs"}, "num_classes", ...})."""
  if arch not in ARCHS:  # before reading a possibly large file
    raise UserError(f"no converter for {arch!r}; supported: {', '.join(ARCHS)}")
  wd.refuse_existing_run(workdir, "import-torchvision")
  flat, info = convert(arch, read_state_dict(weights))
  with wd.writing(workdir):
    os.makedirs(workdir, exist_ok=True)
    np.savez(os.path.join(workdir, wd.PARAMS_FILE), **flat)
  note = "torchvision expects RGB inputs normalised with ImageNet mean/std"
  if arch.startswith("vit"):
    note += (f"; the position embedding is for {info['image_size']} px images: at another size `transfer.init_from` "
             "interpolates its patch grid (bilinear; 'resized' in the load table)")
  files.write_json(os.path.join(workdir, "import.json"), {**info, "weights": os.path.abspath(weights), "note": note})
  return flat, info
