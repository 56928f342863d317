"""Segmentation data: sources by name, each split random access to feature dicts with label maps.

  digit_masks   the embedded default (synthetic.py): digit_boxes' canvases with exact label maps, in memory;
                sizes from data.digit_masks_train / _test / _size
  seg:DIR       an image + mask folder, in one of three layouts (layouts.py):
                  DIR/images + DIR/masks, the same stems (masks: PNG of class ids, greyscale or palette; 255 =
                  ignore), splits from DIR/{train,val,test}.txt (stems) or held out by data.test_fraction; class
                  names from DIR/classes.txt (one per line), else class_i
                  Pascal VOC: JPEGImages/, SegmentationClass/, ImageSets/Segmentation/{train,val}.txt
                  ADE20K: images/{training,validation}/, annotations/{training,validation}/ (ADE's 0 "other"
                  becomes ignore, class k its k - 1; names from objectInfo150.csv when present)
                VOC's val and ADE's validation become split "test" (what results are reported on).
  tfds:NAME     a tensorflow-datasets set with an image and a mask feature (segmentation_mask, ...), e.g.
                oxford_iiit_pet (its trimap: pet, background, border = ignore)

An example is {"image" uint8 [h, w, 3] after data.pp_train / pp_eval, "labels" uint8 [h, w] the label map moved
with the pixels (preprocess.warp_labels: nearest, 255 where the output shows no source), "source_labels" uint8
[S, S] the source-resolution label map padded with 255 to S = the split's evaluation size, "to_input" float32 [4]
the map (sx, sy, tx, ty) from a source_labels pixel to the model input's pixels}: evaluation warps the logits
back through to_input and scores at the source's resolution. A source larger than S is scored on a nearest-
reduced grid that fits (to_input includes the reduction).

Bad input: an image without a mask is an error naming it, or under data.on_bad_image=skip left out (counted at
load); a mask of another size than its image, or with class ids past the classes (other than 255), is an error
naming the file, or under skip an unreadable example (counted by the pipeline).
"""
import dataclasses
import io
import logging

import numpy as np
from PIL import Image, UnidentifiedImageError

from imgrec.data import preprocess, sources, splits as data_splits
from imgrec.data.splits import EncodedSplit
from imgrec.errors import UserError
from imgrec.tasks.segmentation import layouts, synthetic

log = logging.getLogger("imgrec")

PHOTO_SIZE = 512  # the square input of photo sources when data.image_size is 0


def reading_of(cfg, default_size):
  """The Reading of a segmentation source: its pp strings (the config's, or data.splits.dense_pp) and image shape."""
  return data_splits.fixed_size_reading(cfg.data, default_size, "segmentation")


def read_mask(data, what):
  """Encoded PNG bytes (or an array) -> uint8 [H, W] class ids: greyscale values or palette indices."""
  if isinstance(data, np.ndarray):
    a = data[..., 0] if data.ndim == 3 else data
    return np.ascontiguousarray(a.astype(np.uint8))
  try:
    with Image.open(io.BytesIO(data)) as im:
      if im.mode not in ("L", "P", "I", "I;16", "1"):
        raise preprocess.BadImage(f"mask {what} is a {im.mode} image; masks hold class ids (a greyscale or "
                                  "palette PNG, 255 = ignore)")
      a = np.asarray(im)
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
    raise preprocess.BadImage(f"unreadable mask {what}: {e}") from None
  if a.max(initial=0) > 255:
    raise preprocess.BadImage(f"mask {what} has class ids above 255 (up to {a.max()}); ids are 0..254, 255 = ignore")
  return a.astype(np.uint8)


def source_grid(labels, size):
  """(uint8 [size, size] the label map padded with IGNORE, (r, r) the scale from source pixels to that grid):
  reduced by nearest sampling to fit when a side is larger than `size`."""
  h, w = labels.shape
  r = min(1.0, size / h, size / w)
  if r < 1.0:
    labels = preprocess.warp_labels(labels, (r, r, 0.0, 0.0), max(1, int(h * r)), max(1, int(w * r)))
  out = np.full((size, size), preprocess.IGNORE, np.uint8)
  out[:labels.shape[0], :labels.shape[1]] = labels
  return out, r


class Split(EncodedSplit):
  """A segmentation split: images and masks read by index through `items` (layouts.py's readers or arrays),
  class ids remapped by `lut` (uint8 [256]) and checked against `num_classes`."""

  def __init__(self, items, reading, num_classes, eval_size, name, lut=None):
    self.items, self.reading, self.num_classes, self.eval_size, self.name = items, reading, num_classes, eval_size, name
    self.lut = lut

  def __len__(self):
    return len(self.items)

  @property
  def spec(self):
    h, w, c = self.reading.image_shape
    s = self.eval_size
    return {"image": ((h, w, c), np.uint8), "labels": ((h, w), np.uint8), "source_labels": ((s, s), np.uint8),
            "to_input": ((4,), np.float32)}

  def describe(self, i):
    return self.items.describe(i)

  def raw(self, i):
    image, mask = self.items.read(i)  # raises BadImage
    labels = read_mask(mask, self.items.describe_mask(i))
    if self.lut is not None:
      labels = self.lut[labels]
    w, h, _ = preprocess.header(image)
    if labels.shape != (h, w):
      raise preprocess.BadImage(f"its mask {self.items.describe_mask(i)} is {labels.shape[1]}x{labels.shape[0]}, "
                                f"the image {w}x{h}; a mask must match its image pixel for pixel")
    bad = (labels >= self.num_classes) & (labels != preprocess.IGNORE)
    if bad.any():
      raise preprocess.BadImage(f"its mask {self.items.describe_mask(i)} has class id {int(labels[bad].max())} but "
                                f"there are {self.num_classes} classes (ids 0..{self.num_classes - 1}, 255 = ignore); "
                                "fix the mask or name every class in classes.txt")
    return image, labels

  def example(self, i, train, rng):
    """The feature dict of example i (see the module doc), or None for an unreadable one under skip."""
    got = self.read(i, train, rng)
    if got is None:
      return None
    image, affine, labels = got
    grid, r = source_grid(labels, self.eval_size)
    sx, sy, tx, ty = affine
    return {"image": image, "labels": preprocess.warp_labels(labels, affine, *image.shape[:2]),
            "source_labels": grid, "to_input": np.array([sx / r, sy / r, tx, ty], np.float32)}


class Arrays:
  """In-memory images and label maps (digit_masks), by index."""

  def __init__(self, images, labels, name):
    self.images, self.labels, self.name = images, labels, name

  def __len__(self):
    return len(self.images)

  def read(self, i):
    return self.images[i], self.labels[i]

  def describe(self, i):
    return f"{self.name} image {i}"

  def describe_mask(self, i):
    return f"{self.name} mask {i}"

  def take(self, indices):
    return Arrays(self.images[indices], self.labels[indices], self.name)


def load_digit_masks(cfg):
  d = cfg.data
  size = d.get("digit_masks_size", 96)
  reading = reading_of(cfg, size)
  splits = {}
  for split, n in (("train", d.get("digit_masks_train", 2000)), ("test", d.get("digit_masks_test", 500))):
    images, labels = synthetic.generate(split, n, size)
    splits[split] = Split(Arrays(images, labels, f"digit_masks/{split}"), reading, len(synthetic.CLASS_NAMES),
                          eval_size_of(cfg, size), f"digit_masks/{split}")
  return sources.Dataset("digit_masks", splits, synthetic.CLASS_NAMES, reading.image_shape, reading.pp_train,
                         reading.pp_eval)


def eval_size_of(cfg, source_size=None):
  """The padded size of source_labels: `source_size` (the longer side when every source image shares one) up to
  segmentation.eval_size; segmentation.eval_size when sizes vary (None)."""
  cap = cfg.segmentation.get("eval_size", 512)
  return min(cap, int(source_size)) if source_size else cap


def _header_size(items, on_bad):
  """The longer side shared by a sample of a reader's images, or None when their sizes differ."""
  n = len(items)
  sizes = set()
  for i in np.unique(np.linspace(0, n - 1, min(n, sources.HEADER_SAMPLE)).astype(int)) if n else ():
    try:
      w, h, _ = preprocess.header(items.read(int(i))[0])
    except preprocess.BadImage:
      if on_bad != "skip":
        raise UserError(f"unreadable image {items.describe(int(i))}; remove or replace it, or set "
                        "--config.data.on_bad_image=skip") from None
      continue
    sizes.add((h, w))
  return max(next(iter(sizes))) if len(sizes) == 1 else None


def _dataset(name, names, lut, parts, cfg, photo_size=PHOTO_SIZE):
  """A Dataset of readers {split: items}: classes counted when unnamed, the evaluation size from a sample."""
  if names is None:
    n = cfg.segmentation.get("num_classes", 0) or layouts.classes_from_masks(parts["train"], lut, read_mask)
    if n < 1:
      raise UserError(f"{name}: the masks hold no class ids; masks are PNGs of class ids (0, 1, ..., 255 = ignore)")
    names = tuple(f"class_{i}" for i in range(n))
    log.info("%s: %d classes from the masks (name them in classes.txt, one per line)", name, n)
  if len(names) > 255:
    raise UserError(f"{name} has {len(names)} classes; class ids are uint8 with 255 = ignore, so at most 255")
  on_bad = cfg.data.get("on_bad_image", "error")
  size = _header_size(parts.get(cfg.data.get("eval_split", "test"), parts["train"]), on_bad)
  reading = reading_of(cfg, size if size and size <= sources.SMALL_IMAGE else photo_size)
  splits = {s: Split(items, reading, len(names), eval_size_of(cfg, size), f"{name}/{s}", lut)
            for s, items in parts.items()}
  log.info("%s: %s; %d classes; preprocessing train %r, eval %r", name,
           ", ".join(f"{s} {len(v)}" for s, v in splits.items()), len(names), reading.pp_train, reading.pp_eval)
  return sources.Dataset(name, splits, tuple(names), reading.image_shape, reading.pp_train, reading.pp_eval)


def with_validation(ds, train_split, fraction):
  """Carves a "val" split out of `train_split` (a fixed draw, independent of the run's seed)."""
  if "val" in ds.splits:
    raise UserError(f"data set {ds.name!r} already has a val split; set data.val_fraction=0 and "
                    "data.eval_split=val to use it")
  split = ds.split(train_split)
  parts = layouts.held_out(split.items, fraction, "val")
  make = lambda items, s: Split(items, split.reading, split.num_classes, split.eval_size, f"{ds.name}/{s}", split.lut)
  splits = dict(ds.splits, **{train_split: make(parts["train"], train_split), "val": make(parts["val"], "val")})
  return dataclasses.replace(ds, splits=splits)


def open_data(cfg):
  """The segmentation data set named by cfg.data.source (the module doc), with a "val" split held out of
  training when data.val_fraction > 0."""
  source = cfg.data.source
  kind, _, arg = source.partition(":")
  if source == "digit_masks":
    ds = load_digit_masks(cfg)
  elif kind == "seg" and arg:
    names, lut, parts, layout = layouts.open_folder(arg, cfg)
    ds = _dataset(source, names, lut, parts, cfg)
  elif kind == "tfds" and arg:
    names, lut, parts = layouts.open_tfds(arg, cfg)
    ds = _dataset(source, names, lut, parts, cfg)
  else:
    raise UserError(f"unknown segmentation data source {source!r}; use digit_masks, seg:DIR or tfds:NAME")
  if cfg.data.get("val_fraction", 0) > 0:
    ds = with_validation(ds, cfg.data.get("train_split", "train"), cfg.data.val_fraction)
  return ds
