"""Detection splits: a split's boxes as arrays (Annotations), random access to feature dicts (Split), the
tfds variant, and the Reading (pp strings, image shape) of a detection source. See data.py for the sources
and the feature dict."""
import dataclasses
import os

import numpy as np

from imgrec.data import preprocess, sources, splits as data_splits
from imgrec.data.splits import EncodedSplit
from imgrec.errors import UserError
from imgrec.tasks.detection import transforms


@dataclasses.dataclass
class Dataset(sources.Dataset):
  """A detection data set: the classification Dataset plus each class's original category id."""
  category_ids: tuple = ()  # contiguous class index -> the source's category id (COCO's, for evaluation)


@dataclasses.dataclass
class Annotations:
  """A split's images and boxes as arrays. Image n's boxes are rows offsets[n]:offsets[n + 1]."""
  image_ids: np.ndarray  # int64 [N]
  sizes: np.ndarray      # float32 [N, 2] width, height in source pixels
  offsets: np.ndarray    # int64 [N + 1]
  boxes: np.ndarray      # float32 [B, 4] x0, y0, x1, y1 in source pixels, clipped to the image
  classes: np.ndarray    # int32 [B] contiguous class index
  crowd: np.ndarray      # bool [B] COCO iscrowd: ground truth only, no training target
  area: np.ndarray       # float32 [B] COCO's area (of the segment; the box's when absent)

  def __len__(self):
    return len(self.image_ids)

  def of(self, n):
    """(boxes, classes, crowd, image id) of image n."""
    s = slice(self.offsets[n], self.offsets[n + 1])
    return self.boxes[s], self.classes[s], self.crowd[s], int(self.image_ids[n])

  def take(self, images):
    """The annotations of some images, in that order."""
    images = np.asarray(images, np.int64)
    counts = (self.offsets[1:] - self.offsets[:-1])[images]
    rows = (np.concatenate([np.arange(self.offsets[n], self.offsets[n + 1]) for n in images])
            if len(images) else np.zeros(0, np.int64)).astype(np.int64)
    return Annotations(self.image_ids[images], self.sizes[images], np.concatenate([[0], np.cumsum(counts)]),
                       self.boxes[rows], self.classes[rows], self.crowd[rows], self.area[rows])

  def ground_truth(self, class_names, category_ids, file_names=None):
    """The COCO-format dict of these annotations (source pixels, original category ids)."""
    images = [{"id": int(i), "width": int(w), "height": int(h)} for i, (w, h) in zip(self.image_ids, self.sizes)]
    if file_names is not None:
      for entry, name in zip(images, file_names):
        entry["file_name"] = name
    image_of_row = np.repeat(self.image_ids, self.offsets[1:] - self.offsets[:-1])
    xywh = np.concatenate([self.boxes[:, :2], self.boxes[:, 2:] - self.boxes[:, :2]], 1).astype(float)
    anns = [{"id": k + 1, "image_id": int(i), "category_id": int(category_ids[c]), "bbox": [round(v, 3) for v in b],
             "area": float(a), "iscrowd": int(z)}
            for k, (i, c, b, a, z) in enumerate(zip(image_of_row, self.classes, xywh.tolist(), self.area, self.crowd))]
    return {"images": images, "annotations": anns,
            "categories": [{"id": int(i), "name": n} for i, n in zip(category_ids, class_names)]}


def build(image_ids, sizes, ann_image, boxes_xywh, ann_class, crowd, area, max_boxes, counts):
  """Annotations from per-image and per-box arrays (`ann_image`: each box's image index, -1 unknown; `ann_class`:
  -1 unknown), with the bad ones clipped or dropped and counted in `counts`."""
  b = np.asarray(boxes_xywh, np.float64).reshape(-1, 4)
  xyxy = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1)
  known_image = ann_image >= 0
  counts["unknown image id"] += int((~known_image).sum())
  known_class = ann_class >= 0
  counts["unknown category"] += int((known_image & ~known_class).sum())
  ok = known_image & known_class
  counts["zero or negative size"] += int((ok & ((b[:, 2] <= 0) | (b[:, 3] <= 0))).sum())
  ok &= (b[:, 2] > 0) & (b[:, 3] > 0)
  wh = sizes[np.maximum(ann_image, 0)].astype(np.float64)
  clipped = transforms.clip_to(xyxy, wh[:, 0], wh[:, 1])
  changed = ok & (np.abs(clipped - xyxy) > 1e-3).any(1)
  outside = ok & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
  counts["outside the image (dropped)"] += int(outside.sum())
  counts["outside the image (clipped)"] += int((changed & ~outside).sum())
  ok &= ~outside
  rows = np.flatnonzero(ok)
  rows = rows[np.argsort(ann_image[rows], kind="stable")]
  per_image = np.bincount(ann_image[rows], minlength=len(image_ids))
  counts["images without boxes (background)"] += int((per_image == 0).sum())
  targets = np.bincount(ann_image[rows[~crowd[rows]]], minlength=len(image_ids))
  counts[f"images with more than {max_boxes} boxes (largest kept)"] += int((targets > max_boxes).sum())
  return Annotations(np.asarray(image_ids, np.int64), np.asarray(sizes, np.float32),
                     np.concatenate([[0], np.cumsum(per_image)]).astype(np.int64), clipped[rows].astype(np.float32),
                     ann_class[rows].astype(np.int32), crowd[rows].astype(bool), np.asarray(area, np.float32)[rows])


class Split(EncodedSplit):
  """A detection split: images (encoded files, or arrays in memory) and their Annotations."""

  def __init__(self, ann, reading, max_boxes, class_names, category_ids, name, root="", file_names=None,
               images=None):
    self.ann, self.reading, self.max_boxes = ann, reading, max_boxes
    self.class_names, self.category_ids, self.name = tuple(class_names), tuple(category_ids), name
    self.root, self.file_names, self.images = root, file_names, images  # file_names: bytes array 'S'

  def __len__(self):
    return len(self.ann)

  @property
  def spec(self):
    h, w, c = self.reading.image_shape
    m = self.max_boxes
    return {"image": ((h, w, c), np.uint8), "boxes": ((m, 4), np.float32), "classes": ((m,), np.int32),
            "box_mask": ((m,), np.bool_), "image_id": ((), np.int32), "to_source": ((4,), np.float32)}

  def describe(self, i):
    if self.file_names is None:
      return f"{self.name} image {i}"
    return os.path.join(self.root, self.file_names[i].decode())

  def raw(self, i):
    if self.images is not None:
      return self.images[i], self.ann.of(i)
    try:
      with open(self.describe(i), "rb") as f:
        return f.read(), self.ann.of(i)
    except OSError as e:
      raise preprocess.BadImage(str(e)) from None

  def example(self, i, train, rng):
    """The feature dict of example i (see the module doc), or None for an unreadable image under skip."""
    got = self.read(i, train, rng)
    if got is None:
      return None
    image, affine, (boxes, classes, crowd, image_id) = got
    out = transforms.targets(boxes[~crowd], classes[~crowd], affine, image.shape[0], image.shape[1], self.max_boxes)
    return {"image": image, **out, "image_id": np.int32(image_id),
            "to_source": np.asarray(preprocess.invert(affine), np.float32)}

  def coco_ground_truth(self):
    """The split's ground truth as a COCO-format dict in source pixels with the original category ids,
    crowd boxes included (iscrowd=1), for COCO evaluation."""
    names = None if self.file_names is None else [n.decode() for n in self.file_names]
    return self.ann.ground_truth(self.class_names, self.category_ids, names)


def source_reading(cfg, default_size):
  """The Reading of a detection source: its pp strings (the config's, or data.splits.dense_pp) and shape."""
  return data_splits.fixed_size_reading(cfg, default_size, "detection")


def max_boxes_of(cfg):
  m = cfg.get("max_boxes", 100)
  if isinstance(m, bool) or not isinstance(m, int) or m < 1:
    raise UserError(f"data.max_boxes must be a positive whole number, got {m!r}")
  return m


# ----------------------------------------------------------------------------- tfds


def tfds_objects(record, width, height):
  """(boxes float32 [n, 4] x0, y0, x1, y1 in source pixels, labels int32 [n], crowd bool [n], area) of a tfds
  coco record's "objects" (bbox normalised [ymin, xmin, ymax, xmax], as tfds.features.BBoxFeature stores it)."""
  objects = record["objects"]
  b = np.asarray(objects["bbox"], np.float64).reshape(-1, 4)
  boxes = np.stack([b[:, 1] * width, b[:, 0] * height, b[:, 3] * width, b[:, 2] * height], 1).astype(np.float32)
  n = len(boxes)
  crowd = np.asarray(objects.get("is_crowd", np.zeros(n, bool)), bool).reshape(n)
  area = np.asarray(objects.get("area", (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])), np.float32)
  return boxes, np.asarray(objects["label"], np.int32).reshape(n), crowd, area.reshape(n)


class TfdsSplit(Split):
  """Random access into a tfds detection source; the annotations for the ground truth are read on demand."""

  def __init__(self, source, reading, max_boxes, class_names, category_ids, name):
    super().__init__(None, reading, max_boxes, class_names, category_ids, name)
    self.source = source

  def __len__(self):
    return len(self.source)

  def _record(self, i):
    try:
      return self.source[int(i)]
    except Exception as e:  # tfds raises many types for a record it cannot decode
      raise preprocess.BadImage(f"{type(e).__name__}: {e}") from None

  def raw(self, i):
    record = self._record(i)
    image = np.asarray(record["image"])
    boxes, labels, crowd, _ = tfds_objects(record, image.shape[1], image.shape[0])
    return image, (boxes, labels, crowd, int(record.get("image/id", i)))

  def coco_ground_truth(self):
    if self.ann is None:
      self.ann = annotations_of_records((self._record(i) for i in range(len(self))), len(self))
    return self.ann.ground_truth(self.class_names, self.category_ids)


def annotations_of_records(records, n):
  """Annotations of tfds coco records (each decoded once, in order), with the image size from the image."""
  ids, sizes, per, boxes, labels, crowd, area = [], [], [], [], [], [], []
  for k, r in enumerate(records):
    h, w = np.asarray(r["image"]).shape[:2]
    b, lab, c, a = tfds_objects(r, w, h)
    ids.append(int(r.get("image/id", k)))
    sizes.append((w, h))
    per.append(len(b))
    boxes.append(b)
    labels.append(lab)
    crowd.append(c)
    area.append(a)
  cat = lambda xs, shape, dtype: np.concatenate(xs).astype(dtype) if xs else np.zeros(shape, dtype)
  return Annotations(np.array(ids, np.int64), np.array(sizes, np.float32).reshape(-1, 2),
                     np.concatenate([[0], np.cumsum(per)]).astype(np.int64), cat(boxes, (0, 4), np.float32),
                     cat(labels, (0,), np.int32), cat(crowd, (0,), bool), cat(area, (0,), np.float32))
