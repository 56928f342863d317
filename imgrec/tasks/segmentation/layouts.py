"""seg:DIR folder layouts (plain images/ + masks/, Pascal VOC, ADE20K) and tfds segmentation sets, as readers
of (image, mask) by index for data.Split. data.py documents the sources."""
import csv
import logging
import os

import numpy as np
import tqdm

from imgrec.data import preprocess, sources
from imgrec.errors import UserError

log = logging.getLogger("imgrec")

# Pascal VOC's 21 classes, in its label order (0 background; 255 marks object borders and difficult pixels).
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
ADE_CLASSES = 150
SPLIT_FILES = ("train", "val", "test")  # plain layout: DIR/NAME.txt lists the stems of split NAME
# tfds sets with known mask conventions: (class names, {stored id: class id or 255}).
TFDS_PRESETS = {"oxford_iiit_pet": (("background", "pet"), {1: 1, 2: 0, 3: 255})}  # trimap: pet, bg, border
TFDS_MASKS = ("segmentation_mask", "segmentation_label", "annotation", "mask")  # mask feature names tried in order


class Files:
  """Image and mask files by index (paths relative to `root`)."""

  def __init__(self, root, images, masks):
    self.root, self.images, self.masks = root, list(images), list(masks)

  def __len__(self):
    return len(self.images)

  def _bytes(self, path):
    try:
      with open(path, "rb") as f:
        return f.read()
    except OSError as e:
      raise preprocess.BadImage(str(e)) from None

  def read(self, i):
    return self._bytes(self.describe(i)), self._bytes(self.describe_mask(i))

  def describe(self, i):
    return os.path.join(self.root, self.images[i])

  def describe_mask(self, i):
    return os.path.join(self.root, self.masks[i])

  def take(self, indices):
    return Files(self.root, [self.images[k] for k in indices], [self.masks[k] for k in indices])


def ade_lut():
  """ADE20K's ids -> class ids: 0 ("other") becomes ignore, k its k - 1."""
  lut = np.arange(256, dtype=np.int64) - 1
  lut[0] = preprocess.IGNORE
  lut[255] = preprocess.IGNORE
  return lut.astype(np.uint8)


def preset_lut(mapping):
  """{stored id: class id}: everything not named becomes ignore."""
  lut = np.full(256, preprocess.IGNORE, np.uint8)
  for k, v in mapping.items():
    lut[k] = v
  return lut


def _stems(folder, extensions):
  """{stem: file name} of the files in `folder` with one of `extensions`."""
  if not os.path.isdir(folder):
    return {}
  return {os.path.splitext(n)[0]: n for n in sorted(os.listdir(folder)) if n.lower().endswith(extensions)}


def _read_lines(path):
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]


def _pair(root, image_dir, mask_dir, stems, on_bad, counts, where):
  """Files of the `stems` (None: every image) whose image is in image_dir and mask (stem.png) in mask_dir, both
  relative to root; an image without a mask (or a listed stem without an image) is an error, or left out and
  counted under skip."""
  images = _stems(os.path.join(root, image_dir), sources.IMAGE_EXTENSIONS)
  masks = _stems(os.path.join(root, mask_dir), (".png",))
  wanted = sorted(images) if stems is None else stems
  no_image = [s for s in wanted if s not in images]
  no_mask = [s for s in wanted if s in images and s not in masks]
  for what, missing, folder in (("image", no_image, image_dir), ("mask", no_mask, mask_dir)):
    if missing:
      if on_bad != "skip":
        raise UserError(f"{len(missing)} {where} image(s) have no {what} in {os.path.join(root, folder)}, e.g. "
                        f"{missing[0]}{'' if what == 'image' else '.png'}; add it, or set "
                        "--config.data.on_bad_image=skip to leave such images out")
      counts[f"without a {what} (left out)"] = counts.get(f"without a {what} (left out)", 0) + len(missing)
  keep = [s for s in wanted if s in images and s in masks]
  return Files(root, [os.path.join(image_dir, images[s]) for s in keep], [os.path.join(mask_dir, masks[s])
                                                                         for s in keep])


def _class_file(directory):
  path = os.path.join(directory, "classes.txt")
  return tuple(_read_lines(path)) if os.path.isfile(path) else None


def _ade_names(directory):
  path = os.path.join(directory, "objectInfo150.csv")
  if not os.path.isfile(path):
    return None
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  try:
    return tuple(r["Name"].split(";")[0].strip() for r in rows)
  except KeyError:
    raise UserError(f"{path} has no Name column; it should be ADE20K's objectInfo150.csv") from None


def open_folder(directory, cfg):
  """(class names or None, lut or None, {split: Files}, layout name) of a seg:DIR folder."""
  if not os.path.isdir(directory):
    raise UserError(f"segmentation folder {directory} not found; seg:DIR needs DIR/images and DIR/masks (or the "
                    "VOC or ADE20K layout)")
  on_bad, counts = cfg.data.get("on_bad_image", "error"), {}
  join = lambda *p: os.path.join(directory, *p)
  if os.path.isdir(join("JPEGImages")) and os.path.isdir(join("SegmentationClass")):
    lists = join("ImageSets", "Segmentation")
    parts = {{"val": "test"}.get(s, s): _read_lines(join(lists, f"{s}.txt")) for s in ("train", "val")
             if os.path.isfile(join(lists, f"{s}.txt"))}
    if "train" not in parts:
      raise UserError(f"{directory} looks like Pascal VOC but lacks ImageSets/Segmentation/train.txt")
    splits = {s: _pair(directory, "JPEGImages", "SegmentationClass", stems, on_bad, counts, s)
              for s, stems in parts.items()}
    names, lut, layout = _class_file(directory) or VOC_CLASSES, None, "VOC"
  elif os.path.isdir(join("images", "training")) and os.path.isdir(join("annotations", "training")):
    splits = {{"training": "train", "validation": "test"}[s]: _pair(directory, join("images", s), join(
        "annotations", s), None, on_bad, counts, s) for s in ("training", "validation")
        if os.path.isdir(join("images", s))}
    names = _class_file(directory) or _ade_names(directory)
    if names is None:
      n = cfg.segmentation.get("num_classes", 0) or ADE_CLASSES
      names = tuple(f"class_{i}" for i in range(n))
    lut, layout = ade_lut(), "ADE20K"
  elif os.path.isdir(join("images")) and os.path.isdir(join("masks")):
    listed = {s: _read_lines(join(f"{s}.txt")) for s in SPLIT_FILES if os.path.isfile(join(f"{s}.txt"))}
    if listed:
      if "train" not in listed:
        raise UserError(f"{directory} has {', '.join(s + '.txt' for s in listed)} but no train.txt; list the "
                        "training stems there")
      splits = {s: _pair(directory, "images", "masks", stems, on_bad, counts, s) for s, stems in listed.items()}
    else:
      everything = _pair(directory, "images", "masks", None, on_bad, counts, "all")
      splits = held_out(everything, cfg.data.get("test_fraction", 0.2), "test")
    names, lut, layout = _class_file(directory), None, "images + masks"
  else:
    raise UserError(f"{directory} is no segmentation folder: seg:DIR reads DIR/images + DIR/masks (same stems), "
                    "Pascal VOC (JPEGImages/, SegmentationClass/) or ADE20K (images/training/, "
                    "annotations/training/)")
  if not splits or not len(splits.get("train", ())):
    raise UserError(f"no training images with masks found in {directory} ({layout} layout)")
  if counts:
    log.warning("seg:%s: %s", directory, ", ".join(f"{k}: {v}" for k, v in counts.items()))
  return names, lut, splits, layout


def held_out(files, fraction, name):
  """{"train": ..., name: ...}: a fixed draw of `fraction` of the files held out (seed sources.SPLIT_SEED)."""
  if not 0 < fraction < 1:
    raise UserError(f"the held-out fraction must be between 0 and 1 (data.test_fraction / data.val_fraction), "
                    f"got {fraction}")
  n = len(files)
  held = np.zeros(n, bool)
  held[np.random.default_rng(sources.SPLIT_SEED).permutation(n)[:max(1, int(round(n * fraction)))]] = True
  return {"train": files.take(np.flatnonzero(~held)), name: files.take(np.flatnonzero(held))}


def classes_from_masks(files, lut, read_mask):
  """The number of classes the masks use (largest id other than 255, plus one), reading every mask once."""
  top = -1
  for i in tqdm.trange(len(files), desc="scanning masks for class ids", unit="mask"):
    try:
      m = read_mask(files.read(i)[1], files.describe_mask(i))
    except preprocess.BadImage:
      continue  # reported when the example is read
    m = lut[m] if lut is not None else m
    ids = m[m != preprocess.IGNORE]
    top = max(top, int(ids.max()) if ids.size else -1)
  return top + 1


class TfdsItems:
  """Records of a tfds data source: (image array, mask array)."""

  def __init__(self, source, mask_feature, name):
    self.source, self.mask_feature, self.name = source, mask_feature, name

  def __len__(self):
    return len(self.source)

  def read(self, i):
    try:
      record = self.source[int(i)]
    except Exception as e:  # tfds raises many types for a record it cannot decode
      raise preprocess.BadImage(f"{type(e).__name__}: {e}") from None
    return np.asarray(record["image"]), np.asarray(record[self.mask_feature])

  def describe(self, i):
    return f"{self.name} record {i}"

  def describe_mask(self, i):
    return f"{self.name} record {i} ({self.mask_feature})"

  def take(self, indices):
    return Picked(self, indices)


class Picked:
  """Some records of another reader, by index."""

  def __init__(self, items, indices):
    self.items, self.indices = items, np.asarray(indices, np.int64)

  def __len__(self):
    return len(self.indices)

  def read(self, i):
    return self.items.read(int(self.indices[i]))

  def describe(self, i):
    return self.items.describe(int(self.indices[i]))

  def describe_mask(self, i):
    return self.items.describe_mask(int(self.indices[i]))

  def take(self, indices):
    return Picked(self.items, self.indices[np.asarray(indices, np.int64)])


def open_tfds(name, cfg):
  """(class names, lut, {split: TfdsItems}) of a tfds segmentation set."""
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise UserError("tfds: sources need tensorflow-datasets: pip install tensorflow-datasets") from None
  d = cfg.data
  try:
    info = tfds.builder(name, data_dir=d.get("dir") or None).info
    srcs = {split: tfds.data_source(name, split=split, data_dir=d.get("dir") or None)
            for split in dict.fromkeys((d.get("train_split", "train"), d.get("eval_split", "test")))}
  except Exception as e:  # tfds raises many types for unknown or not-prepared data sets
    raise UserError(f"tensorflow-datasets could not open {name!r}: {type(e).__name__}: {str(e)[:300]} "
                    "(prepare it with `tfds build` or set data.dir to its data_dir)") from None
  features = info.features
  masks = [k for k in TFDS_MASKS if k in features and isinstance(features[k], tfds.features.Image)]
  if "image" not in features or not masks:
    raise UserError(f"tfds data set {name!r} is no segmentation set: it needs 'image' and a mask image feature "
                    f"({', '.join(TFDS_MASKS)}); it has {list(features)}")
  base = name.split(":")[0].split("/")[0]
  if base in TFDS_PRESETS:
    names, mapping = TFDS_PRESETS[base]
    lut = preset_lut(mapping)
  else:
    n = cfg.segmentation.get("num_classes", 0)
    if not n:
      raise UserError(f"tfds set {name!r} does not name its classes: set --config.segmentation.num_classes=N "
                      "(mask values 0..N-1 are classes, 255 is ignored)")
    names, lut = tuple(f"class_{i}" for i in range(n)), None
  return names, lut, {s: TfdsItems(src, masks[0], f"tfds:{name}/{s}") for s, src in srcs.items()}
