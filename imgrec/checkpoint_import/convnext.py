"""ConvNeXt checkpoints onto imgrec's ConvNeXt (imgrec/models/convnext.py), from timm or Hugging Face.

  timm  stem.{0,1}, stages.{i}.downsample.{0,1}, stages.{i}.blocks.{j}.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma},
        head.norm, head.fc
  hf    [convnext.]embeddings.{patch_embeddings,layernorm}, encoder.stages.{i}.downsampling_layer.{0,1},
        encoder.stages.{i}.layers.{j}.{dwconv,layernorm,pwconv1,pwconv2,layer_scale_parameter}, layernorm,
        classifier (its last LayerNorm's eps is the config's layer_norm_eps)
Depths and widths are read from the tensors.
"""
import re

from imgrec.checkpoint_import.mapping import same, split, torch_leaf
from imgrec.errors import UserError
from imgrec.models import convnext as zoo


def layout(keys):
  if "stem.0.weight" in keys and "stages.0.blocks.0.conv_dw.weight" in keys:
    return "timm"
  if "embeddings.patch_embeddings.weight" in keys and "encoder.stages.0.layers.0.dwconv.weight" in keys:
    return "hf"
  return None


def rename(key):
  return key.removeprefix("convnext.")


NAMES = {"timm": ("stages.{}.blocks.{}.conv_dw.weight", "stem.0.weight", "head.fc.weight"),
         "hf": ("encoder.stages.{}.layers.{}.dwconv.weight", "embeddings.patch_embeddings.weight", "classifier.weight")}


def arch(source, layout_, model=None):
  s, cfg = source.shapes, source.config or {}
  block, stem, head = NAMES[layout_]
  depths, dims = [], []
  while block.format(len(depths), 0) in s:
    i = len(depths)
    depths.append(sum(1 for j in range(1000) if block.format(i, j) in s))
    dims.append(s[block.format(i, 0)][0])
  found = next((f"convnext_{k}" for k, (d, c) in zoo.SIZES.items() if tuple(d) == tuple(depths)
                and tuple(c) == tuple(dims)), None)
  name = model or found or "convnext_tiny"
  if name not in zoo.MODELS:
    raise UserError(f"--model {model!r} is not a ConvNeXt; this checkpoint is a ConvNeXt of depths {depths}")
  if model and found and model != found:  # another published size: a run named for shapes it lacks
    raise UserError(f"--model {model} is not this checkpoint's size: it is a {found} (depths {depths}, dims "
                    f"{dims}); give --model {found}, or leave --model out")
  kwargs, base = {}, zoo.MODELS[name].keywords
  if tuple(base["depths"]) != tuple(depths) or tuple(base["dims"]) != tuple(dims):
    kwargs = {"depths": [int(d) for d in depths], "dims": [int(c) for c in dims]}
  if layout_ == "hf":
    kwargs["head_norm_eps"] = float(cfg.get("layer_norm_eps", 1e-12))
    if cfg.get("hidden_act", "gelu") != "gelu":
      raise UserError(f"{source.path}: hidden_act {cfg['hidden_act']!r}; imgrec's ConvNeXt imports 'gelu' models")
  classes = s[head][0] if head in s else None
  return name, kwargs, None if classes is None else int(classes), 224


def rule(layout_, name, target, shapes):
  path, leaf = split(name)
  t = lambda prefix: torch_leaf(prefix, leaf, len(target[name]))
  m = re.fullmatch(r"stage(\d+)_block(\d+)/?(.*)", path)
  if m:
    i, j, part = int(m[1]) - 1, int(m[2]) - 1, m[3]
    if layout_ == "timm":
      if part == "":
        return same(f"stages.{i}.blocks.{j}.gamma")
      return t(f"stages.{i}.blocks.{j}.{ {'dw_conv': 'conv_dw', 'ln': 'norm', 'fc1': 'mlp.fc1', 'fc2': 'mlp.fc2'}[part]}")
    if part == "":
      return same(f"encoder.stages.{i}.layers.{j}.layer_scale_parameter")
    return t(f"encoder.stages.{i}.layers.{j}.{ {'dw_conv': 'dwconv', 'ln': 'layernorm', 'fc1': 'pwconv1', 'fc2': 'pwconv2'}[part]}")
  m = re.fullmatch(r"stage(\d+)_down_(ln|conv)", path)
  if m:
    k = {"ln": 0, "conv": 1}[m[2]]
    i = int(m[1]) - 1
    return t(f"stages.{i}.downsample.{k}" if layout_ == "timm" else f"encoder.stages.{i}.downsampling_layer.{k}")
  top = ({"stem_conv": "stem.0", "stem_ln": "stem.1", "head_ln": "head.norm", "head": "head.fc"} if layout_ == "timm" else
         {"stem_conv": "embeddings.patch_embeddings", "stem_ln": "embeddings.layernorm", "head_ln": "layernorm",
          "head": "classifier"})
  return t(top[path])
