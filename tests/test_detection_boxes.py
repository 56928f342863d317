"""Box ops against independent references: pycocotools' mask.iou for IoU, a hand-computed GIoU table."""
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from imgrec.tasks.detection import boxes


def random_xywh(rng, n):
  xy = rng.uniform(0, 50, (n, 2))
  wh = rng.uniform(1, 40, (n, 2))
  return np.concatenate([xy, wh], 1)


def test_pairwise_iou_matches_pycocotools():
  rng = np.random.default_rng(0)
  a, b = random_xywh(rng, 30), random_xywh(rng, 20)
  expected = coco_mask.iou(a.tolist(), b.tolist(), [0] * len(b))
  got = boxes.pairwise_iou(boxes.xywh_to_xyxy(a.astype(np.float32)), boxes.xywh_to_xyxy(b.astype(np.float32)))
  assert expected.max() > 0.3 and (expected == 0).any()  # both overlapping and disjoint pairs are checked
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)


# (a, b, GIoU) worked by hand: intersection I, union U, enclosing area C; GIoU = I/U - (C - U)/C.
GIOU_TABLE = [
    ([0, 0, 2, 2], [0, 0, 2, 2], 1.0),                # identical
    ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7 - 2 / 9),      # I 1, U 7, C 9
    ([0, 0, 2, 2], [0, 0, 1, 1], 0.25),               # nested: I 1, U 4, C 4
    ([0, 0, 1, 1], [2, 0, 3, 1], -1 / 3),             # disjoint side by side: U 2, C 3
    ([0, 0, 1, 1], [2, 2, 3, 3], -7 / 9),             # disjoint diagonal: U 2, C 9
    ([0, 0, 4, 2], [2, 1, 6, 3], 2 / 14 - 4 / 18),    # I 2, U 14, C 18
]


@pytest.mark.parametrize("a,b,expected", GIOU_TABLE)
def test_giou_hand_table(a, b, expected):
  a, b = np.float32(a), np.float32(b)
  assert float(boxes.giou(a, b)) == pytest.approx(expected, abs=1e-6)
  assert float(boxes.giou(b, a)) == pytest.approx(expected, abs=1e-6)
  assert float(boxes.giou_loss(a, b)) == pytest.approx(1 - expected, abs=1e-6)
  assert float(boxes.pairwise_giou(a[None], b[None])[0, 0]) == pytest.approx(expected, abs=1e-6)


def test_conversions_round_trip_and_clip():
  b = np.float32([[1, 2, 5, 10], [-3, 4, 20, 30]])
  np.testing.assert_allclose(boxes.xyxy_to_xywh(b), [[1, 2, 4, 8], [-3, 4, 23, 26]])
  np.testing.assert_allclose(boxes.xyxy_to_cxcywh(b), [[3, 6, 4, 8], [8.5, 17, 23, 26]])
  np.testing.assert_allclose(boxes.cxcywh_to_xyxy(boxes.xyxy_to_cxcywh(b)), b)
  np.testing.assert_allclose(boxes.xywh_to_xyxy(boxes.xyxy_to_xywh(b)), b)
  np.testing.assert_allclose(boxes.clip(b, 16, 12), [[1, 2, 5, 10], [0, 4, 12, 16]])
  np.testing.assert_allclose(boxes.area(np.float32([[0, 0, 2, 3], [2, 2, 1, 5]])), [6, 0])
