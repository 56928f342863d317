"""COCO-format annotations (coco:DIR, coco:ANN.json@IMAGES_DIR) and tensorflow-datasets' COCO (tfds:coco/2017)
as detection Datasets; data.py documents the sources and what becomes of bad annotations."""
import collections
import json
import logging
import os
import re

import numpy as np

from imgrec.data import sources
from imgrec.errors import UserError
from imgrec.tasks.detection.splits import Dataset, Split, TfdsSplit, build, max_boxes_of, source_reading

log = logging.getLogger("imgrec")

DEFAULT_SIZE = 512  # the square input of photo sources when data.image_size is 0
# tfds' coco labels are indices into COCO 2017's 80 categories sorted by id; these are the ids.
COCO_2017_CATEGORY_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
                          28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
                          54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
                          81, 82, 84, 85, 86, 87, 88, 89, 90)
COCO_SPLITS = re.compile(r"^(train|val)(20\d\d)$")


def _read_json(path):
  try:
    with open(path) as f:
      d = json.load(f)
  except OSError as e:
    raise UserError(f"cannot read COCO annotations {path}: {e}") from None
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON ({e}); point data.source at a COCO-format annotation file") from None
  missing = [k for k in ("images", "annotations", "categories") if not isinstance(d, dict) or not isinstance(
      d.get(k), list)]
  if missing:
    raise UserError(f"{path} is not COCO-format: it lacks the list(s) {', '.join(missing)}")
  return d


def _field(path, what, items, key, k):
  try:
    return [item[key] for item in items]
  except (KeyError, TypeError):
    bad = next(n for n, item in enumerate(items) if not isinstance(item, dict) or key not in item)
    raise UserError(f"{path}: {what} {bad} has no {key!r}; every {what} needs {k}") from None


def categories_of(path, d):
  """(class names, category ids) of a COCO dict, sorted by id."""
  ids = _field(path, "category", d["categories"], "id", "an id and a name")
  names = _field(path, "category", d["categories"], "name", "an id and a name")
  if len(set(ids)) != len(ids) or not ids:
    raise UserError(f"{path}: the category ids must be distinct and there must be at least one")
  order = np.argsort(ids)
  return tuple(str(names[k]) for k in order), tuple(int(ids[k]) for k in order)


def _existing(image_dir, names):
  """Bool mask of the file names present under `image_dir`: one directory listing per folder, no stat."""
  listed = {}
  out = np.zeros(len(names), bool)
  for k, name in enumerate(names):
    folder, _, base = name.rpartition("/")
    if folder not in listed:
      d = os.path.join(image_dir, folder)
      listed[folder] = set(os.listdir(d)) if os.path.isdir(d) else set()
    out[k] = base in listed[folder]
  return out


def _numbers(path, what, values, dtype):
  try:
    return np.array(values, dtype)
  except (ValueError, TypeError):
    raise UserError(f"{path}: every {what} must be a number") from None


def load_coco_json(path, d, image_dir, cfg, category_ids, counts):
  """(Annotations, file names as a bytes array) of COCO-format dict `d` (read from `path`) whose images are in
  `image_dir`."""
  images = d["images"]
  need = "id, file_name, width and height"
  ids = _numbers(path, "image id", _field(path, "image", images, "id", need), np.int64)
  names = [str(n) for n in _field(path, "image", images, "file_name", need)]
  sizes = np.stack([_numbers(path, f"image {k}", _field(path, "image", images, k, need), np.float64)
                    for k in ("width", "height")], 1).reshape(-1, 2)
  present = _existing(image_dir, names)
  if not present.all():
    first = names[int(np.flatnonzero(~present)[0])]
    if cfg.get("on_bad_image", "error") != "skip":
      raise UserError(f"{int((~present).sum())} image(s) listed in {path} are missing from {image_dir}, e.g. "
                      f"{first}; restore them, or set --config.data.on_bad_image=skip to skip them")
    # Kept, with their boxes: skipped when read, as an unreadable file is, so their boxes count as misses
    # in evaluation rather than vanish from it.
    counts["missing image file"] += int((~present).sum())
  anns = d["annotations"]
  need = "image_id, category_id and bbox"
  ann_img_id = _numbers(path, "image_id", _field(path, "annotation", anns, "image_id", need), np.int64)
  ann_cat = _numbers(path, "category_id", _field(path, "annotation", anns, "category_id", need), np.int64)
  try:
    bbox = np.array([a["bbox"] for a in anns], np.float64).reshape(len(anns), 4)
  except (KeyError, ValueError, TypeError):
    raise UserError(f"{path}: every annotation needs a bbox of 4 numbers [x, y, width, height]") from None
  crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
  area = np.array([a.get("area", w * h) for a, (_, _, w, h) in zip(anns, bbox)], np.float64)
  ann_image = _lookup(ids, ann_img_id)  # each box's image row, -1 for an unknown id
  ann_class = _lookup(np.asarray(category_ids, np.int64), ann_cat)
  ann = build(ids, sizes, ann_image, bbox, ann_class, crowd, area, max_boxes_of(cfg), counts)
  return ann, np.array([n.encode() for n in names], dtype=bytes)


def _lookup(keys, values):
  """The position of each value in `keys` (distinct), -1 where absent; vectorised for COCO's 860k boxes."""
  order = np.argsort(keys, kind="stable")
  pos = np.searchsorted(keys[order], values)
  hit = pos < len(keys)
  hit[hit] = keys[order][pos[hit]] == values[hit]
  return np.where(hit, order[np.minimum(pos, len(keys) - 1)], -1).astype(np.int64)


def _summary(source, counts, splits):
  more = {k: v for k, v in counts.items() if v}
  problems = {k: v for k, v in more.items() if k != "images without boxes (background)"}
  line = (f"{source}: " + ", ".join(f"{s} {len(v)} images {len(v.ann.boxes)} boxes" for s, v in splits.items())
          + "; " + (", ".join(f"{k}: {v}" for k, v in more.items()) or "no bad annotations"))
  (log.warning if problems else log.info)(line)
  return line


def load_coco(arg, cfg):
  reading = source_reading(cfg, DEFAULT_SIZE)
  max_boxes = max_boxes_of(cfg)
  counts = collections.Counter()
  ann_path, at, image_dir = arg.partition("@")
  if at:  # one file and its image folder, held out by data.test_fraction
    if not os.path.isfile(ann_path) or not os.path.isdir(image_dir):
      raise UserError(f"coco:ANN.json@IMAGES_DIR needs an annotation file and an image folder; "
                      f"{ann_path if not os.path.isfile(ann_path) else image_dir} not found")
    d = _read_json(ann_path)
    names, ids = categories_of(ann_path, d)
    ann, files = load_coco_json(ann_path, d, image_dir, cfg, ids, counts)
    test = np.zeros(len(ann), bool)
    frac = cfg.get("test_fraction", 0.2)
    if not 0 < frac < 1:
      raise UserError(f"data.test_fraction must be between 0 and 1, got {frac}")
    test[np.random.default_rng(sources.SPLIT_SEED).permutation(len(ann))[:max(1, int(round(len(ann) * frac)))]] = True
    parts = {s: (ann.take(np.flatnonzero(m)), files[m], image_dir) for s, m in (("train", ~test), ("test", test))}
  else:
    folder = os.path.join(arg, "annotations")
    found = sorted(f for f in os.listdir(folder) if re.fullmatch(r"instances_.+\.json", f)) if os.path.isdir(
        folder) else []
    if not found:
      raise UserError(f"no annotations/instances_NAME.json in {arg}: coco:DIR needs the COCO layout (e.g. "
                      "annotations/instances_train2017.json with images in train2017/), "
                      "or use coco:ANN.json@IMAGES_DIR")
    parts, names, ids = {}, None, None
    for f in found:
      stem = f[len("instances_"):-len(".json")]
      m = COCO_SPLITS.match(stem)
      split = ({"train": "train", "val": "test"}[m.group(1)]) if m else stem
      path = os.path.join(folder, f)
      d = _read_json(path)
      these = categories_of(path, d)
      if names is None:
        names, ids = these
      elif these != (names, ids):
        raise UserError(f"{path} has other categories than {os.path.join(folder, found[0])}; all splits need the same")
      image_dir = os.path.join(arg, stem)
      if not os.path.isdir(image_dir):
        raise UserError(f"{path} has no image folder {image_dir}: put split {stem}'s images there")
      ann, files = load_coco_json(path, d, image_dir, cfg, ids, counts)
      parts[split] = (ann, files, image_dir)
  splits = {s: Split(ann, reading, max_boxes, names, ids, f"coco:{arg}/{s}", root, files)
            for s, (ann, files, root) in parts.items()}
  _summary(f"coco:{arg}", counts, splits)
  return Dataset(f"coco:{arg}", splits, names, reading.image_shape, reading.pp_train, reading.pp_eval,
                 category_ids=ids)


def load_tfds(name, cfg):
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise UserError("tfds: sources need tensorflow-datasets: pip install tensorflow-datasets") from None
  try:
    info = tfds.builder(name, data_dir=cfg.get("dir") or None).info
    srcs = {split: tfds.data_source(name, split=split, data_dir=cfg.get("dir") or None)
            for split in dict.fromkeys((cfg.get("train_split", "train"), cfg.get("eval_split", "test")))}
  except Exception as e:  # tfds raises many types for unknown or not-prepared data sets
    raise UserError(f"tensorflow-datasets could not open {name!r}: {type(e).__name__}: {str(e)[:300]} "
                    "(prepare it with `tfds build` or set data.dir to its data_dir)") from None
  features = info.features
  if "image" not in features or "objects" not in features or "bbox" not in features["objects"].feature:
    raise UserError(f"tfds data set {name!r} is no detection set: it needs 'image' and 'objects' with 'bbox' "
                    f"and 'label'; it has {list(features)}")
  names = tuple(features["objects"]["label"].names)
  ids = COCO_2017_CATEGORY_IDS if name.split(":")[0].startswith("coco/2017") and len(names) == 80 else tuple(
      range(1, len(names) + 1))
  reading = source_reading(cfg, DEFAULT_SIZE)
  max_boxes = max_boxes_of(cfg)
  splits = {s: TfdsSplit(src, reading, max_boxes, names, ids, f"tfds:{name}/{s}") for s, src in srcs.items()}
  return Dataset(f"tfds:{name}", splits, names, reading.image_shape, reading.pp_train, reading.pp_eval,
                 category_ids=ids)
