"""Converters from torchvision `state_dict` files to imgrec parameters (by name).

  imgrec import-torchvision resnet50 resnet50-weights.pth --workdir W
  imgrec train --config.model.name=resnet50 --config.model.kwargs.stem=imagenet \
      --config.transfer.init_from=W ...

writes W/params.npz ({"params/...", "batch_stats/..."} by imgrec name) and W/import.json. The
torchvision layout is the ImageNet stem, so the imgrec model needs `stem="imagenet"`. Needs torch
(the optional extra `imgrec[torch]`) only to read the .pth file; the conversion is numpy.

Supported: resnet18, resnet34, resnet50. (VGG, MobileNetV2, EfficientNet-B0 and ViT-B/16 are
not converted yet: their imgrec models live in other modules.)
"""
import json
import os
import re

import numpy as np

from imgrec import transfer
from imgrec.errors import UserError

RESNETS = ("resnet18", "resnet34", "resnet50")


def _conv(w):
  return np.transpose(np.asarray(w, np.float32), (2, 3, 1, 0))  # OIHW -> HWIO


def _bn(sd, prefix, name, out):
  out[f"params/{name}/scale"] = sd[f"{prefix}.weight"]
  out[f"params/{name}/bias"] = sd[f"{prefix}.bias"]
  out[f"batch_stats/{name}/mean"] = sd[f"{prefix}.running_mean"]
  out[f"batch_stats/{name}/var"] = sd[f"{prefix}.running_var"]


def convert_resnet(sd):
  """torchvision ResNet state_dict (numpy values) -> flat imgrec names for imgrec.models.resnet."""
  out, used = {}, set()
  sd = {k: np.asarray(v, np.float32) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
  if "conv1.weight" not in sd or "fc.weight" not in sd:
    raise UserError("not a torchvision ResNet state_dict: no conv1.weight / fc.weight")
  out["params/stem_conv/kernel"] = _conv(sd["conv1.weight"])
  _bn(sd, "bn1", "stem_bn", out)
  for key in sd:
    m = re.match(r"layer(\d+)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.", key)
    if not m:
      continue
    stage, block, part = int(m.group(1)), int(m.group(2)) + 1, m.group(3)
    prefix, name = f"layer{stage}.{block - 1}.{part}", f"stage{stage}_block{block}/"
    if prefix in used:
      continue
    used.add(prefix)
    if part.startswith("conv"):
      out[f"params/{name}{part}/kernel"] = _conv(sd[prefix + ".weight"])
    elif part == "downsample.0":
      out[f"params/{name}proj_conv/kernel"] = _conv(sd[prefix + ".weight"])
    elif part == "downsample.1":
      _bn(sd, prefix, name + "proj_bn", out)
    else:
      _bn(sd, prefix, name + part, out)
  out["params/head/kernel"] = sd["fc.weight"].T
  out["params/head/bias"] = sd["fc.bias"]
  return out


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
  return {k: v.detach().cpu().numpy() for k, v in sd.items()}


def import_torchvision(arch, weights, workdir):
  """Converts `weights` (.pth) of torchvision `arch` into `workdir/params.npz`; returns the flat dict."""
  if arch not in RESNETS:
    raise UserError(f"no converter for {arch!r} yet; supported: {', '.join(RESNETS)}")
  flat = convert_resnet(read_state_dict(weights))
  os.makedirs(workdir, exist_ok=True)
  np.savez(os.path.join(workdir, transfer.PARAMS_FILE), **flat)
  num_classes = int(flat["params/head/bias"].shape[0])
  with open(os.path.join(workdir, "import.json"), "w") as f:
    json.dump({"arch": arch, "weights": os.path.abspath(weights), "num_classes": num_classes,
               "model": {"name": arch, "kwargs": {"stem": "imagenet"}},
               "note": "torchvision expects RGB inputs normalised with ImageNet mean/std"}, f, indent=2)
  return flat
