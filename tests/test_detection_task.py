"""The detection task: its config block's validation, and the task functions (eval fn, COCO evaluation, report,
prediction outputs, device augmentation) on a stub model whose outputs are known."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imgrec import config, tasks
from imgrec.errors import UserError
from imgrec.tasks import detection
from imgrec.data import sources
from imgrec.tasks.detection import holdout, model as fcos


@pytest.mark.parametrize("key,value,message", [
    ("levels", (3, 5), "consecutive"), ("levels", (1, 2), "from 2 up"), ("pre_nms_topk", 50, "at least as large"),
    ("nms_iou", 0.0, "nms_iou"), ("l1_weight", -1.0, "weights"), ("prior_prob", 1.0, "prior_prob")])
def test_detection_config_is_validated(key, value, message):
  cfg = config.defaults()
  cfg.task, cfg.data.source = "detection", "digit_boxes"
  config.validate(cfg)
  assert cfg.select_metric == "AP"  # "" resolves to the task's default
  with cfg.detection.ignore_type():
    cfg.detection[key] = value
  with pytest.raises(UserError, match=message):
    config.validate(cfg)
  # The same key on a run of another task would be ignored there: refused, naming the owner.
  cfg.task, cfg.data.source, cfg.select_metric = "classification", "digits", ""
  with pytest.raises(UserError, match=f"detection.{key}=.* is a setting of the detection task, and this run's task "
                                      "is classification"):
    config.validate(cfg)


# ---------------------------------------------------------------------------- the task functions, on a stub model

H = W = 32
LEVELS = (3,)
POINTS = fcos.points(H, W, LEVELS)  # 16 points at stride 8
# image i: (box in pixels, class); to_source doubles the coordinates and shifts x by 1
TRUTH = [([4, 4, 20, 12], 1), ([10, 8, 30, 30], 0)]


class FakeSplit:
  """What the detection data gives: features per example, COCO ground truth in source coordinates."""
  category_ids = (5, 9)
  class_names = ("ring", "bar")
  name, max_boxes = "fake", 4
  ann = type("Annotations", (), {"image_ids": np.arange(100, 100 + len(TRUTH))})

  def __len__(self):
    return len(TRUTH)

  def example(self, i, train, rng):
    box, cls = TRUTH[i]
    image = np.zeros((H, W, 3), np.uint8)
    image[box[1]:box[3], box[0]:box[2]] = 200
    boxes = np.zeros((4, 4), np.float32)
    boxes[0] = box
    return {"image": image, "boxes": boxes, "classes": np.int32([cls, 0, 0, 0]),
            "box_mask": np.bool_([True, False, False, False]), "image_id": np.int32(100 + i),
            "to_source": np.float32([2, 2, 1, 0])}

  def coco_ground_truth(self):
    anns = [{"id": i + 1, "image_id": 100 + i, "category_id": self.category_ids[c], "iscrowd": 0,
             "bbox": [2 * b[0] + 1, 2 * b[1], 2 * (b[2] - b[0]), 2 * (b[3] - b[1])],
             "area": 4.0 * (b[2] - b[0]) * (b[3] - b[1])} for i, (b, c) in enumerate(TRUTH)]
    return {"images": [{"id": 100 + i, "width": 2 * W, "height": 2 * H} for i in range(len(TRUTH))],
            "annotations": anns, "categories": [{"id": c, "name": n} for c, n in zip(self.category_ids,
                                                                                     self.class_names)]}


class StubModel:
  """FCOS's outputs for the truth above: at the point nearest each box's centre, its class and exact ltrb."""
  num_detections, pre_nms_topk, nms_iou, score_threshold = 5, 8, 0.6, 0.05

  def apply(self, variables, x, train):
    n = x.shape[0]
    logits = np.full((n, len(POINTS), 2), -9.0, np.float32)
    ltrb = np.ones((n, len(POINTS), 4), np.float32)
    for i, (box, cls) in enumerate(TRUTH[:n]):
      centre = [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]
      p = int(np.argmin(((POINTS[:, :2] - centre) ** 2).sum(1)))
      logits[i, p, cls] = 9.0
      px, py = POINTS[p, :2]
      ltrb[i, p] = [px - box[0], py - box[1], box[2] - px, box[3] - py]
    return {"logits": jnp.asarray(logits), "ltrb": jnp.asarray(ltrb), "centerness": jnp.full((n, len(POINTS)), 9.0),
            "points": jnp.broadcast_to(POINTS, (n,) + POINTS.shape)}


def batch_of(split):
  examples = [split.example(i, False, None) for i in range(len(split))]
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def test_eval_fn_evaluate_and_report(tmp_path):
  split = FakeSplit()
  info = {"class_names": list(split.class_names), "mean": (0.5,) * 3, "std": (0.25,) * 3}
  outputs = detection.make_eval_fn(StubModel(), info, config.defaults())({}, batch_of(split))
  outputs = jax.tree.map(np.asarray, outputs)
  np.testing.assert_array_equal(outputs["num_detections"], [1, 1])
  record, summary = detection.evaluate(outputs, split, info, config.defaults())
  assert set(record) == set(detection.RECORD) and record["examples"] == 2
  assert record["AP"] == pytest.approx(1.0) and summary["per_class"] == pytest.approx({"ring": 1.0, "bar": 1.0})
  detection.write_report(str(tmp_path), outputs, split, {"class_names": list(split.class_names)},
                         {**summary, "split": "test", "step": 7})
  for name in ("metrics.json", "report.md", "detections.png", "precision_recall.png"):
    assert os.path.getsize(tmp_path / name) > 100, name
  assert json.loads((tmp_path / "metrics.json").read_text())["AP"] == pytest.approx(1.0)
  assert "| AP | 1.0000 |" in (tmp_path / "report.md").read_text()
  assert tasks.line(detection, {"split": "test", **record}).startswith("test AP 1.0000, AP50 1.0000")


def test_predict_gives_the_object_detection_api_outputs():
  images = batch_of(FakeSplit())["image"]
  out = jax.jit(detection.make_predict(StubModel(), (0.5,) * 3, (0.25,) * 3), static_argnums=())({}, images)
  assert [(k, v.dtype, v.shape[1:]) for k, v in sorted(out.items())] == sorted(
      (n, jnp.float32, s) for n, _, s in tasks.outputs(detection, StubModel(), {}))
  np.testing.assert_array_equal(out["num_detections"], [1, 1])
  np.testing.assert_allclose(out["detection_boxes"][0, 0], [4 / 32, 4 / 32, 12 / 32, 20 / 32], atol=1e-6)
  np.testing.assert_array_equal(out["detection_classes"][:, :2], [[2, 0], [1, 0]])  # class index + 1; 0 = none


def test_geometric_device_augmentation_is_refused():
  cfg = config.defaults()
  cfg.data.augment = "brightness(0.2)|flip"
  with pytest.raises(UserError, match="'flip' moves or mixes pixels"):
    detection.make_inputs(cfg, {})
  cfg.data.augment = "brightness(0.2)|contrast(0.1)"
  x, targets = detection.make_inputs(cfg, {})(jax.random.key(0), batch_of(FakeSplit()))
  assert x.shape == (2, H, W, 3) and set(targets) == {"boxes", "classes", "box_mask"}


def test_val_holdout_splits_images_and_ground_truth():
  ds = sources.Dataset("fake", {"train": FakeSplit(), "test": FakeSplit()}, FakeSplit.class_names, (H, W, 3))
  out = holdout.with_validation(ds, "train", 0.5)
  train, val = out.split("train"), out.split("val")
  assert len(train) == len(val) == 1 and out.split("test") is ds.split("test")
  ids = {int(s.example(0, False, None)["image_id"]) for s in (train, val)}
  assert ids == {100, 101}
  for s in (train, val):
    gt = s.coco_ground_truth()
    mine = int(s.example(0, False, None)["image_id"])
    assert [im["id"] for im in gt["images"]] == [mine] and [a["image_id"] for a in gt["annotations"]] == [mine]
    assert s.category_ids == FakeSplit.category_ids
  with pytest.raises(UserError, match="leaves no val"):
    holdout.with_validation(ds, "train", 0.1)
