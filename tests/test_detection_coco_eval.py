"""COCO mAP on a hand-written COCO ground truth: perfect detections score 1, a box shifted to IoU 0.613 scores
what the 10 IoU thresholds it passes and fails work out to by hand."""
import json

import numpy as np
import pytest

from imgrec.tasks.detection import coco_eval

# Two images, two categories with non-contiguous COCO ids; all boxes medium-sized (32^2 < area < 96^2).
GT_JSON = """{
  "images": [{"id": 11, "width": 200, "height": 200}, {"id": 12, "width": 120, "height": 90}],
  "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "dog"}],
  "annotations": [
    {"id": 1, "image_id": 11, "category_id": 3, "bbox": [20, 30, 50, 40], "area": 2000, "iscrowd": 0},
    {"id": 2, "image_id": 11, "category_id": 7, "bbox": [100, 100, 60, 60], "area": 3600, "iscrowd": 0},
    {"id": 3, "image_id": 12, "category_id": 3, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0}]
}"""
CATEGORY_IDS = [3, 7]  # contiguous class -> COCO id
# Preprocessed image -> source: image 11 was halved in size and shifted 5 px; image 12 is as is.
TO_SOURCE = np.float32([[2, 2, 5, 0], [1, 1, 0, 0]])


def detections(shift=0.0):
  """Decoded outputs in preprocessed pixels (what the eval fn gives) for the ground truth above."""
  src = [[[20, 30, 70, 70], [100, 100, 160, 160]], [[10 + shift, 10, 60 + shift, 60], [0, 0, 0, 0]]]
  boxes = np.zeros((2, 3, 4), np.float32)
  for i, (sx, sy, tx, ty) in enumerate(TO_SOURCE):
    b = np.float32(src[i])
    boxes[i, :2] = np.stack([(b[:, 0] - tx) / sx, (b[:, 1] - ty) / sy, (b[:, 2] - tx) / sx, (b[:, 3] - ty) / sy], 1)
  return {"boxes": boxes, "scores": np.float32([[0.9, 0.8, 0], [0.5, 0, 0]]),
          "classes": np.int32([[0, 1, 0], [0, 0, 0]]), "num_detections": np.int32([2, 1]),
          "image_id": np.int32([11, 12]), "to_source": TO_SOURCE}


def test_results_are_in_source_coordinates_with_coco_ids():
  results = coco_eval.to_results(detections(), CATEGORY_IDS)
  assert len(results) == 3
  assert results[0]["image_id"] == 11 and results[0]["category_id"] == 3
  np.testing.assert_allclose(results[0]["bbox"], [20, 30, 50, 40])
  assert results[1]["category_id"] == 7 and results[2]["image_id"] == 12


def test_perfect_detections_score_one():
  metrics, per_class, curves = coco_eval.evaluate(json.loads(GT_JSON),
                                                  coco_eval.to_results(detections(), CATEGORY_IDS))
  for k in ("AP", "AP50", "AP75", "APm", "AR100"):
    assert metrics[k] == pytest.approx(1.0), k
  assert metrics["APs"] == -1 and metrics["APl"] == -1  # no small or large ground truth
  assert per_class == {"car": pytest.approx(1.0), "dog": pytest.approx(1.0)}
  np.testing.assert_allclose(curves["AP"], 1.0)


def test_shifted_box_scores_the_thresholds_it_passes():
  # The car of image 12 shifted 12 px: IoU (50 - 12) / (50 + 12) = 0.613, a match at IoU thresholds 0.50, 0.55,
  # 0.60 and a false positive at the 7 others. Car: at those 7, the one true car detection (scored higher)
  # reaches recall 0.5 at precision 1: 51 of COCO's 101 recall points. Dog is perfect.
  metrics, per_class, curves = coco_eval.evaluate(json.loads(GT_JSON),
                                                  coco_eval.to_results(detections(shift=12), CATEGORY_IDS))
  car = (3 * 1.0 + 7 * 51 / 101) / 10
  assert per_class["car"] == pytest.approx(car) and per_class["dog"] == pytest.approx(1.0)
  assert metrics["AP"] == pytest.approx((car + 1) / 2)
  assert metrics["AP50"] == pytest.approx(1.0)
  assert metrics["AP75"] == pytest.approx((51 / 101 + 1) / 2)
  assert metrics["AR100"] == pytest.approx((1 + (3 + 7 * 0.5) / 10) / 2)
  assert curves["AP75"][50] == pytest.approx(1.0) and curves["AP75"][51] == pytest.approx(0.5)


def test_no_detections_score_zero():
  metrics, per_class, _ = coco_eval.evaluate(json.loads(GT_JSON), [])
  assert metrics["AP"] == 0 and per_class == {"car": 0.0, "dog": 0.0}
