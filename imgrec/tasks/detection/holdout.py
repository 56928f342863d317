"""A "val" split held out of a detection training split (data.val_fraction > 0), so that model selection on AP
never looks at the test split. A fixed draw of whole images (seed independent of the run's); each part's COCO
ground truth holds only its own images."""
import dataclasses

import numpy as np

from imgrec.data import splits
from imgrec.errors import UserError

SEED = 20221  # the draw of val images: fixed, so every run of a data set holds out the same images


class Part(splits.Subset):
  """Some images of a detection split, by index, with their share of its ground truth."""

  def __init__(self, split, indices, name):
    super().__init__(split, indices)
    self.name = name
    self.class_names, self.category_ids = split.class_names, split.category_ids
    self.max_boxes = split.max_boxes

  @property
  def spec(self):
    return self.split.spec

  def example(self, i, train, rng):
    return self.split.example(int(self.indices[i]), train, rng)

  def coco_ground_truth(self):
    gt = self.split.coco_ground_truth()  # a tfds split builds its annotations (split.ann) here
    keep = {int(i) for i in self.split.ann.image_ids[self.indices]}
    return {**gt, "images": [im for im in gt["images"] if im["id"] in keep],
            "annotations": [a for a in gt["annotations"] if a["image_id"] in keep]}


def with_validation(ds, train_split, fraction):
  """`ds` with `train_split` cut in two: the rest of it, and "val" (`fraction` of its images)."""
  if "val" in ds.splits:
    raise UserError(f"data set {ds.name!r} already has a val split; set data.val_fraction=0 and "
                    "data.eval_split=val to use it")
  split = ds.split(train_split)
  n = len(split)
  n_val = int(round(n * fraction))
  if not 0 < n_val < n:
    raise UserError(f"data.val_fraction {fraction} of {n} training images leaves no val or no training image; "
                    "use a fraction that holds out at least one of each")
  order = np.random.default_rng(SEED).permutation(n)
  val, rest = np.sort(order[:n_val]), np.sort(order[n_val:])
  return dataclasses.replace(ds, splits={**ds.splits, train_split: Part(split, rest, f"{split.name} (train part)"),
                                         "val": Part(split, val, f"{split.name} (val part)")})
