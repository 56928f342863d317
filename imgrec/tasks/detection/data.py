"""Detection data: sources by name, each split random access to feature dicts with boxes.

  digit_boxes           the embedded default (imgrec/tasks/detection/synthetic.py), held in memory;
                        sizes from data.digit_boxes_train / _test / _size, glyphs from data.digit_boxes_glyphs
  coco:DIR              COCO layout: each DIR/annotations/instances_NAME.json with its images in DIR/NAME/
                        is split NAME; COCO's own train2017 / val2017 (and 2014) become splits train / test
                        (val2017 is the set COCO results are reported on; test2017 has no public boxes).
                        `imgrec make-detection-data DIR` writes this layout.
  coco:ANN.json@IMAGES  any one COCO-format file with its image folder, split into train / test by
                        data.test_fraction (a fixed draw of images)
  tfds:coco/2017        tensorflow-datasets' COCO through `tfds.data_source` (its "objects" feature)

An example is {"image" uint8 [H, W, 3], "boxes" float32 [M, 4] x0, y0, x1, y1 in the preprocessed image's
pixels, "classes" int32 [M] (0..C-1), "box_mask" bool [M], "image_id" int32, "to_source" float32 [4]}, with
M = data.max_boxes and to_source (sx, sy, tx, ty) mapping an output point (x, y) to (x*sx+tx, y*sy+ty) in
the source image. Images are decoded and preprocessed per example (data.pp_train / data.pp_eval, default
imgrec.data.splits.dense_pp(data.image_size or 512)), in the data workers; boxes move with the pixels
(transforms.py): clipped to the output, dropped when less than transforms.MIN_VISIBLE of one is left.
Crowd boxes (iscrowd) are no training target but stay in the ground truth, as COCO evaluates them.

The annotations are kept as a few numpy arrays (`Annotations`), not a dict per box: COCO train has 860k.
Bad annotations never crash a run: an out-of-image box is clipped, a box with no width or height, an unknown
category or image id is dropped, an image without boxes is kept as background, an image with more than M
boxes keeps its M largest; one line at load gives the counts. A listed image file that is missing is an
error naming it, or under data.on_bad_image=skip it is counted and skipped when read, as an unreadable one
is: training takes the next image, and evaluation keeps its ground truth, whose boxes count as misses.
"""
import collections

import numpy as np

from imgrec.errors import UserError
from imgrec.tasks.detection import coco, synthetic
from imgrec.tasks.detection.splits import Dataset, Split, build, max_boxes_of, source_reading


def _load_digit_boxes(cfg):
  size = cfg.get("digit_boxes_size", 96)
  reading = source_reading(cfg, size)
  max_boxes = max_boxes_of(cfg)
  kind = cfg.get("digit_boxes_glyphs", "digits")
  names = synthetic.GLYPHS.get(kind, ())
  splits = {}
  for split, n in (("train", cfg.get("digit_boxes_train", 2000)), ("test", cfg.get("digit_boxes_test", 500))):
    images, boxes, classes = synthetic.generate(split, n, size, kind=kind)
    counts = collections.Counter()
    ann_image = np.repeat(np.arange(n), [len(b) for b in boxes])
    b = np.concatenate(boxes) if n else np.zeros((0, 4), np.float32)
    xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], 1)
    ann = build(np.arange(1, n + 1), np.full((n, 2), size, np.float32), ann_image, xywh,
                np.concatenate(classes) if n else np.zeros(0, np.int32), np.zeros(len(b), bool),
                xywh[:, 2] * xywh[:, 3], max_boxes, counts)
    splits[split] = Split(ann, reading, max_boxes, names, synthetic.CATEGORY_IDS, f"digit_boxes/{split}",
                          images=images)
  return Dataset("digit_boxes", splits, names, reading.image_shape, reading.pp_train,
                 reading.pp_eval, category_ids=synthetic.CATEGORY_IDS)


def open_data(cfg):
  """The detection data set named by `cfg` (the config's data section)."""
  source = cfg.source
  kind, _, arg = source.partition(":")
  if source == "digit_boxes":
    return _load_digit_boxes(cfg)
  if kind == "coco" and arg:
    return coco.load_coco(arg, cfg)
  if kind == "tfds" and arg:
    return coco.load_tfds(arg, cfg)
  raise UserError(f"unknown detection data source {source!r}; use digit_boxes, coco:DIR, coco:ANN.json@IMAGES_DIR "
                  "or tfds:coco/2017")
