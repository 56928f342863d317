"""Pretrained checkpoints from other frameworks -> imgrec parameters, by name, onto a zoo model.

  imgrec import SOURCE [--model NAME] --out W
  imgrec train --config.model.name=NAME [--config.model.kwargs.K=V ...] --config.transfer.init_from=W ...
  (or --config.transfer.init_from=SOURCE directly)

SOURCE is a big_vision / ViT-repository .npz ("FILE.npz:img": a two-tower file's image tower), a timm /
Hugging Face .safetensors file or model folder (config.json + model.safetensors), or a torchvision .pth. The
format is read from the file's bytes (formats.py), the layout and architecture from its key names, shapes and
config (one module per family: vit, convnext, resnet, efficientnet, torchvision), and every parameter of the
zoo model is made from the source by a rule (mapping.py), or the import fails naming what did not map.

W gets params.npz ({"params/...", "batch_stats/..."} by imgrec name, written one array at a time), import.json
(the zoo model and options under which it computes what the source computes, the preprocessing the checkpoint
expects, counts per status) and import_report.json (every parameter and source key with its status).
"""
import json
import os
import zipfile

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from imgrec import config, files, models
from imgrec.checkpoint_import import convnext, efficientnet, formats, mapping, resnet, torchvision, two_tower, vit
from imgrec.errors import UserError

FAMILIES = {"vit": vit, "convnext": convnext, "resnet": resnet, "efficientnet": efficientnet,
            "torchvision": torchvision, "two_tower": two_tower}
# `imgrec import-torchvision ARCH` names: torchvision's model name -> imgrec's
TORCHVISION_ARCHS = {"resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50", "vgg16": "vgg16",
                     "vgg16_bn": "vgg16_bn", "mobilenet_v2": "mobilenet_v2", "efficientnet_b0": "efficientnet_b0",
                     "vit_b_16": "vit_b16"}
PARAMS_FILE, INFO_FILE, REPORT_FILE = "params.npz", "import.json", "import_report.json"
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def is_checkpoint(path):
  """True for what this module imports (a foreign checkpoint); False for imgrec's own params .npz / workdir."""
  spec, _ = formats.split_tower(path)
  if os.path.isdir(spec):
    return os.path.isfile(os.path.join(spec, "model.safetensors"))
  if not os.path.isfile(spec):
    return False
  try:
    kind = formats.detect(spec)
  except UserError:
    return False
  if kind != "npz":
    return True
  with np.load(spec, allow_pickle=False) as f:  # imgrec's own files name variables "params/..."/"batch_stats/..."
    return not all(k.startswith(("params/", "batch_stats/")) and not k.endswith("embedding/kernel") for k in f.files)


def _renamed(source, family):
  """`source` with keys in the family module's canonical names (Hugging Face roots and old names), less torch's
  BatchNorm step counters (bookkeeping, not parameters)."""
  names = {family.rename(k): k for k in source.shapes if not k.endswith("num_batches_tracked")}
  return source._replace(shapes={k: source.shapes[v] for k, v in names.items()}, get=lambda k: source.get(names[k]))


def identify(source, model=None):
  """(family module, layout, source in its canonical names) of a checkpoint; `model` (a zoo name) must agree."""
  for fam_name, family in FAMILIES.items():
    renamed = _renamed(source, family)
    layout = family.layout(renamed.shapes)
    if layout:
      if model and models.family(model) != fam_name and not (fam_name == "torchvision"
                                                             and models.family(model) in ("vgg", "mobilenet")):
        raise UserError(f"{source.path} is a {layout} {fam_name} checkpoint, not a {models.family(model)} "
                        f"(--model {model}); give a {fam_name} model name, or leave --model out")
      return family, layout, renamed
  keys = list(source.shapes)
  raise UserError(f"{source.path}: a key layout imgrec does not know (first keys: {', '.join(keys[:8])}); imgrec "
                  "imports ViT/DeiT (timm, Hugging Face, big_vision, torchvision), ConvNeXt (timm, Hugging Face), "
                  "ResNet and EfficientNet (timm, torchvision), VGG-16 and MobileNetV2 (torchvision)")


def target_shapes(name, kwargs, num_classes, image_size):
  """{imgrec name: shape} of zoo model `name` (abstract: nothing is computed)."""
  model = models.create(name, num_classes, **kwargs)
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  flat = traverse_util.flatten_dict(dict(shapes), sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def preprocessing(source, family_name, layout):
  """What the checkpoint expects of its inputs: {"mean", "std", "image_size", "pp_eval", "from"}, from its own
  config where it has one (timm's pretrained_cfg, Hugging Face's preprocessor_config.json), else the
  convention of its layout; None when neither says."""
  cfg, hf = source.config or {}, source.extra or {}
  pre = cfg.get("pretrained_cfg", cfg)
  if "mean" in pre and "std" in pre:  # timm
    size = int((pre.get("input_size") or [3, 224, 224])[-1])
    crop = float(pre.get("crop_pct") or 0.875)
    return {"mean": list(pre["mean"]), "std": list(pre["std"]), "image_size": size,
            "pp_eval": f"decode|resize_small({int(size / crop)})|central_crop({size})",
            "interpolation": pre.get("interpolation"), "from": "config.json (timm pretrained_cfg)"}
  if "image_mean" in hf:  # Hugging Face image processor
    size = hf.get("crop_size") or hf.get("size") or {}
    size = size if isinstance(size, int) else size.get("height") or size.get("shortest_edge") or 224
    crop = hf.get("crop_pct")
    pp = f"decode|resize_small({int(size / crop)})|central_crop({size})" if crop else f"decode|resize({size})"
    return {"mean": list(hf["image_mean"]), "std": list(hf["image_std"]), "image_size": int(size), "pp_eval": pp,
            "from": "preprocessor_config.json"}
  if layout == "hf_siglip":  # a SiglipModel folder without its preprocessor_config.json: SigLIP's [-1, 1]
    return {"mean": [0.5] * 3, "std": [0.5] * 3, "image_size": None, "pp_eval": None, "from": "SigLIP convention"}
  if layout == "hf_clip":  # a CLIPModel folder without its preprocessor_config.json: OpenAI CLIP's statistics
    return {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), "image_size": None, "pp_eval": None,
            "from": "OpenAI CLIP convention"}
  if layout == "big_vision":  # big_vision / ViT repository: pixels scaled to [-1, 1] (value_range(-1, 1))
    return {"mean": [0.5] * 3, "std": [0.5] * 3, "image_size": None, "pp_eval": None,
            "from": "big_vision convention (value_range(-1, 1))"}
  if source.format == "pth":  # torchvision's weights: ImageNet statistics, resize 256, crop 224
    return {"mean": IMAGENET[0], "std": IMAGENET[1], "image_size": 224,
            "pp_eval": "decode|resize_small(256)|central_crop(224)", "from": "torchvision convention"}
  return None


def convert(spec, model=None, emit=None):
  """Converts checkpoint `spec` (a path, or a formats.Source): (values {imgrec name: float32 array} or None when
  `emit` took them, info, rows)."""
  model = TORCHVISION_ARCHS.get(model, model)
  if model:
    models.family(model)  # an unknown name fails before the file is read
  source = spec if isinstance(spec, formats.Source) else formats.read(spec)
  spec = source.path if isinstance(spec, formats.Source) else spec  # "FILE.npz:img" keeps the tower it names
  family, layout, source = identify(source, model)
  fam_name = next(k for k, v in FAMILIES.items() if v is family)
  name, kwargs, num_classes, size = family.arch(source, layout, model)
  target = target_shapes(name, kwargs, num_classes or 1, size)
  optional = () if num_classes else tuple(k for k in target if k.split("/")[1] == "head")
  what = f"{layout} {fam_name}"
  values, rows = mapping.convert(source, target, lambda n, t: family.rule(layout, n, t, source.shapes), what,
                                 optional, emit, getattr(family, "IGNORED", {}).get(layout))
  info = {"source": os.path.abspath(formats.split_tower(spec)[0]), "spec": spec, "format": source.format,
          "layout": what, "model": {"name": name, "kwargs": kwargs}, "num_classes": num_classes,
          "image_size": size, "preprocessing": preprocessing(source, fam_name, layout), "counts": mapping.counts(rows),
          "class_names": class_names(source.config, num_classes)}
  return values, info, rows


def class_names(config, num_classes):
  """The checkpoint's own class names: Hugging Face's `id2label`, timm's `label_names`; `class_0..` when it has
  none (or they do not match its head); [] for a checkpoint without a head."""
  config, n = config or {}, num_classes or 0
  names = config.get("label_names")
  if not names and isinstance(config.get("id2label"), dict):
    try:
      names = [config["id2label"].get(str(i)) for i in range(n)]
    except AttributeError:
      names = None
  if isinstance(names, list) and len(names) == n and all(isinstance(x, str) for x in names):
    return list(names)
  return [f"class_{i}" for i in range(n)]


class _NpzWriter:
  """Writes a .npz one array at a time (np.savez needs them all in memory at once)."""

  def __init__(self, path):
    self.zip = zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True)
    self.count = 0

  def __call__(self, name, value):
    with self.zip.open(name + ".npy", "w", force_zip64=True) as f:
      np.lib.format.write_array(f, value, allow_pickle=False)
    self.count += 1


def import_checkpoint(spec, out, model=None):
  """Converts `spec` into the new folder `out` (params.npz, import.json, import_report.json); returns (info, rows).
  A folder that already holds a run is refused before anything is read or written."""
  files.refuse_existing_run(out, "imgrec import")
  created = not os.path.exists(out)
  os.makedirs(out, exist_ok=True)
  params = os.path.join(out, PARAMS_FILE)
  writer = _NpzWriter(params + ".tmp")
  try:
    _, info, rows = convert(spec, model, emit=writer)
  except BaseException:
    writer.zip.close()
    os.remove(params + ".tmp")
    if created:  # a failed import leaves nothing behind (a folder that was there before stays)
      os.rmdir(out)
    raise
  writer.zip.close()
  os.replace(params + ".tmp", params)
  if info["layout"].endswith(" two_tower"):  # the text tower's tokenizer travels with it
    folder = info["source"] if os.path.isdir(info["source"]) else os.path.dirname(info["source"])
    info["text"] = two_tower.copy_tokenizer(folder, info["layout"].split()[0], info["model"]["kwargs"], out)
  files.write_json(os.path.join(out, REPORT_FILE), rows)
  files.write_json(os.path.join(out, INFO_FILE), info)
  return info, rows


def read_info(path):
  """import.json of an import folder (or the folder of a params.npz written by `imgrec import`), or None."""
  folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  found = os.path.join(folder, INFO_FILE)
  if not os.path.isfile(found):
    return None
  with open(found) as f:
    return json.load(f)


def describe(path):
  """What `path` (an `imgrec import` folder, or a checkpoint itself) is, without converting it: {"model":
  {"name", "kwargs"}, "num_classes", "image_size", "preprocessing", "layout"}; for recipes that start from any
  checkpoint (configs/finetune_*.py)."""
  info = read_info(path) if os.path.isdir(path) and not is_checkpoint(path) else None
  if info:
    return info
  source = formats.read(path)
  family, layout, source = identify(source)
  fam_name = next(k for k, v in FAMILIES.items() if v is family)
  name, kwargs, num_classes, size = family.arch(source, layout)
  return {"model": {"name": name, "kwargs": kwargs}, "num_classes": num_classes, "image_size": size,
          "preprocessing": preprocessing(source, fam_name, layout), "layout": f"{layout} {fam_name}"}


def checkpoint_preprocessing(path):
  """The preprocessing `transfer.init_from=path` expects: from import.json, or from the checkpoint itself."""
  if not path:
    return None
  info = read_info(path) if os.path.isdir(path) or path.endswith(PARAMS_FILE) else None
  if info:
    return info.get("preprocessing")
  if not is_checkpoint(path):
    return None
  source = formats.read(path)
  family, layout, source = identify(source)
  return preprocessing(source, next(k for k, v in FAMILIES.items() if v is family), layout)


def run_files(folder):
  """(config, dataset.json) of an `imgrec import` folder, as a run of its zoo model would have them: the class
  names the checkpoint gave (import.json "class_names"; `class_0..` for an older import), its input size, and the
  normalisation and eval preprocessing the import recorded (ImageNet statistics when the checkpoint said none)."""
  imp = read_info(folder)
  if not isinstance(imp, dict) or "model" not in imp:
    raise UserError(f"{os.path.join(folder, INFO_FILE)} is not an `imgrec import` record; "
                    "import the checkpoint again into a new --out folder")
  two = imp.get("layout", "").endswith(" two_tower")
  n = imp.get("num_classes") or 0
  tower = formats.split_tower(imp.get("spec", ""))[1]
  if not n and tower:
    raise UserError(f"{folder} holds only the {tower!r} tower of a two-tower file ({imp.get('spec')}): zero-shot "
                    "and labels at request time need both towers: import the whole file (imgrec import "
                    f"{formats.split_tower(imp['spec'])[0]} --out DIR), or fine-tune this tower "
                    f"(--config.transfer.init_from={folder})")
  if not n:
    raise UserError(f"{folder} holds a checkpoint without a classification head ({imp.get('layout')}): it has no "
                    f"classes to predict; fine-tune it first (--config.transfer.init_from={folder})")
  # a two-tower model has no classes of its own: its labels are written at request time (the image_text task)
  names = [] if two else imp.get("class_names") or [f"class_{i}" for i in range(n)]
  pre = imp.get("preprocessing") or {}
  size = int(imp.get("image_size") or pre.get("image_size") or 224)
  cfg = config.defaults()
  cfg.model.name = imp["model"]["name"]
  with cfg.model.ignore_type():
    cfg.model.kwargs = ml_collections.ConfigDict(imp["model"]["kwargs"])
  cfg.data.source, cfg.data.image_size, cfg.data.pp_eval = "", size, pre.get("pp_eval") or ""
  mean, std = (pre["mean"], pre["std"]) if pre else IMAGENET
  cfg.data.mean, cfg.data.std = tuple(mean), tuple(std)
  if two:
    two_tower.run_config(cfg, imp, folder)
  info = {"source": imp.get("source", ""), "class_names": list(names), "image_shape": [size, size, 3],
          "mean": [float(m) for m in mean], "std": [float(s) for s in std], "num_train": cfg.batch_size,
          "pp_eval": pre.get("pp_eval") or "", "imported": True}
  return cfg, info
