"""COCO box mAP with pycocotools: decoded detections (preprocessed-image pixels, contiguous classes) are mapped
to source coordinates and COCO category ids, then scored against the split's ground truth (a COCO-format dict).
"""
import contextlib
import copy
import io
import warnings

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from imgrec.tasks.detection import transforms

# pycocotools' summary, in its `stats` order; -1 where the split has no ground truth of that size.
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def to_results(detections, category_ids):
  """Per-example arrays {"boxes" [N, K, 4], "scores", "classes", "num_detections", "image_id", "to_source"
  [N, 4] (sx, sy, tx, ty)} -> COCO results [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]."""
  category_ids = np.asarray(category_ids)
  k = np.asarray(detections["scores"]).shape[1]
  valid = np.arange(k)[None, :] < np.asarray(detections["num_detections"])[:, None]
  b = np.asarray(detections["boxes"], np.float64)
  if len(b):  # each example's boxes to its source image's pixels
    b = np.stack([transforms.to_source(boxes, m) for boxes, m in zip(b, detections["to_source"])]).reshape(b.shape)
  xywh = np.concatenate([b[..., :2], b[..., 2:] - b[..., :2]], -1)[valid].tolist()
  image_ids = np.broadcast_to(np.asarray(detections["image_id"])[:, None], valid.shape)[valid].tolist()
  cats = category_ids[np.asarray(detections["classes"])[valid]].tolist()
  scores = np.asarray(detections["scores"], np.float64)[valid].tolist()
  return [{"image_id": i, "category_id": c, "bbox": box, "score": s}
          for i, c, box, s in zip(image_ids, cats, xywh, scores)]


def _ground_truth(gt):
  """A COCO object from a dict, filling the optional fields COCOeval reads (id, area, iscrowd)."""
  gt = copy.deepcopy(gt)
  for i, a in enumerate(gt.get("annotations", [])):
    a.setdefault("id", i + 1)
    a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))
    a.setdefault("iscrowd", 0)
  coco = COCO()
  coco.dataset = gt
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
  return coco


def _mean_valid(a, axis=None):
  """Mean over the entries pycocotools did not mark -1 (no ground truth); -1 where none is left."""
  a = np.where(a > -1, a, np.nan)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # the all-NaN slices are the -1s
    m = np.nanmean(a, axis=axis)
  return np.nan_to_num(m, nan=-1.0)


def evaluate(gt, results, names=None):
  """COCO box evaluation of `results` (to_results) against the ground-truth dict `gt`; `names` maps COCO
  category id -> class name (default: the categories' "name" fields).

  Returns (metrics {STATS...}, per-class AP {name: AP, -1 where a class has no ground truth}, curves
  {"recall" [101], "AP50" / "AP75" / "AP" precision [101] averaged over classes}) for area "all", 100 detections.
  """
  coco = _ground_truth(gt)
  names = names or {c["id"]: c.get("name", str(c["id"])) for c in gt["categories"]}
  cat_ids = sorted(coco.getCatIds())
  recall = np.linspace(0, 1, 101)
  if not results:  # pycocotools cannot load an empty result list; nothing detected scores 0
    zeros = np.zeros(101)
    return ({k: 0.0 for k in STATS}, {names.get(c, str(c)): 0.0 for c in cat_ids},
            {"recall": recall, "AP50": zeros, "AP75": zeros, "AP": zeros})
  with contextlib.redirect_stdout(io.StringIO()):
    ev = COCOeval(coco, coco.loadRes(results), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
  metrics = {k: float(v) for k, v in zip(STATS, ev.stats)}
  precision = ev.eval["precision"][:, :, :, 0, -1]  # [IoU thresholds, recall points, classes], area all, 100 dets
  per_class = {names.get(c, str(c)): float(_mean_valid(precision[:, :, k])) for k, c in enumerate(ev.params.catIds)}
  at = lambda t: int(np.argmin(np.abs(ev.params.iouThrs - t)))
  curves = {"recall": recall,
            "AP50": np.maximum(_mean_valid(precision[at(0.5)], axis=1), 0),
            "AP75": np.maximum(_mean_valid(precision[at(0.75)], axis=1), 0),
            "AP": np.maximum(_mean_valid(precision.transpose(1, 0, 2).reshape(len(recall), -1), axis=1), 0)}
  return metrics, per_class, curves
