"""Detection data: COCO-format annotations with every kind of bad entry, the embedded generated set and
its COCO round trip, tfds' coco feature layout."""
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from imgrec import cli, config
from imgrec.errors import UserError
from imgrec.data import sources
from imgrec.tasks import detection
from imgrec.tasks.detection import data, synthetic
from tests.helpers import needs_debian


def data_cfg(source, **kw):
  cfg = config.defaults()
  cfg.task, cfg.data.source = "detection", source
  for k, v in kw.items():
    cfg.data[k] = v
  return config.validate(cfg).data


def write_coco(tmp_path, missing=True):
  """A hand-written COCO file: non-contiguous category ids (17 listed before 5), and one of each bad case."""
  images = tmp_path / "images"
  images.mkdir()
  Image.new("RGB", (40, 30), (90, 90, 90)).save(images / "a.png")
  Image.new("RGB", (20, 20), (10, 10, 10)).save(images / "b.png")
  anns = [[1, 5, [2, 3, 10, 8], 0],      # a good box, category 5 -> class 0
          [1, 17, [30, 20, 20, 20], 0],  # past the bottom right corner: clipped to [30, 20, 40, 30]
          [1, 5, [5, 5, 0, 4], 0],       # zero width: dropped
          [1, 99, [1, 1, 5, 5], 0],      # unknown category: dropped
          [1, 17, [0, 0, 40, 30], 1],    # a crowd box: ground truth only
          [1, 5, [20, 2, 4, 4], 0],      # the smallest box: dropped from the targets when max_boxes=2
          [7, 5, [1, 1, 5, 5], 0]]       # unknown image id: dropped
  if missing:
    anns.append([3, 5, [1, 1, 5, 5], 0])  # on the missing image: goes with it
  d = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                  {"id": 2, "file_name": "b.png", "width": 20, "height": 20}]  # no boxes: background
       + ([{"id": 3, "file_name": "gone.png", "width": 9, "height": 9}] if missing else []),
       "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": z}
                       for k, (i, c, b, z) in enumerate(anns)],
       "categories": [{"id": 17, "name": "dog"}, {"id": 5, "name": "cat"}]}
  path = tmp_path / "ann.json"
  path.write_text(json.dumps(d))
  return f"coco:{path}@{images}"


def test_coco_bad_annotations_are_clipped_dropped_and_counted(tmp_path, caplog):
  source = write_coco(tmp_path)
  with pytest.raises(UserError, match=r"1 image\(s\) listed in .*ann.json are missing from .*images, e.g. gone.png; "
                     r".*on_bad_image=skip"):
    data.open_data(data_cfg(source))
  with caplog.at_level(logging.INFO, logger="imgrec"):
    ds = data.open_data(data_cfg(source, on_bad_image="skip", max_boxes=2, test_fraction=0.5,
                                 pp_train="decode|letterbox(80)", pp_eval="decode|letterbox(80)"))
  line = caplog.records[-1].getMessage()
  for count in ("missing image file: 1", "unknown image id: 1", "unknown category: 1", "zero or negative size: 1",
                "outside the image (clipped): 1", "images without boxes (background): 1",
                "images with more than 2 boxes (largest kept): 1"):
    assert count in line, line
  assert ds.class_names == ("cat", "dog") and ds.category_ids == (5, 17) and ds.image_shape == (80, 80, 3)
  by_ids = {tuple(s.ann.image_ids): s for s in ds.splits.values()}
  assert sorted(by_ids) == [(1, 2), (3,)]  # the missing image kept (its boxes count in evaluation) ...
  assert by_ids[(3,)].example(0, False, None) is None  # ... and skipped when read
  assert by_ids[(3,)].coco_ground_truth()["annotations"][0]["bbox"] == [1, 1, 5, 5]
  a = by_ids[(1, 2)]
  ex = a.example(0, False, None)  # letterbox(80) of 40x30: scale 2, no translation
  n = ex["box_mask"].sum()
  assert n == 2 and ex["image_id"] == 1 and ex["image"].shape == (80, 80, 3)
  np.testing.assert_allclose(ex["boxes"][:n], [[4, 6, 24, 22], [60, 40, 80, 60]])  # the 2 largest non-crowd
  assert ex["classes"][:n].tolist() == [0, 1] and not ex["box_mask"][n:].any()
  np.testing.assert_allclose(ex["to_source"], [0.5, 0.5, 0, 0])
  assert a.example(1, True, np.random.default_rng(0))["box_mask"].sum() == 0  # background image kept
  gt = a.coco_ground_truth()
  assert [(g["category_id"], g["bbox"], g["iscrowd"]) for g in gt["annotations"]] == [
      (5, [2, 3, 10, 8], 0), (17, [30, 20, 10, 10], 0), (17, [0, 0, 40, 30], 1), (5, [20, 2, 4, 4], 0)]
  assert gt["images"] == [{"id": 1, "width": 40, "height": 30, "file_name": "a.png"},
                          {"id": 2, "width": 20, "height": 20, "file_name": "b.png"}]
  assert {c["id"]: c["name"] for c in gt["categories"]} == {5: "cat", 17: "dog"}


def test_coco_unreadable_image_and_bad_files_are_user_errors(tmp_path):
  source = write_coco(tmp_path, missing=False)
  (tmp_path / "images" / "a.png").write_bytes(b"not a png")
  ds = data.open_data(data_cfg(source, test_fraction=0.5))
  split = next(s for s in ds.splits.values() if s.ann.image_ids[0] == 1)
  with pytest.raises(UserError, match=r"unreadable image .*a.png.*on_bad_image=skip"):
    split.example(0, True, np.random.default_rng(0))
  skip = data.open_data(data_cfg(source, test_fraction=0.5, on_bad_image="skip"))
  assert next(s for s in skip.splits.values() if s.ann.image_ids[0] == 1).example(0, True, None) is None
  bad = {"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
  (tmp_path / "bad.json").write_text(json.dumps(bad))
  with pytest.raises(UserError, match=r"bad.json: image 0 has no 'file_name'"):
    data.open_data(data_cfg(f"coco:{tmp_path / 'bad.json'}@{tmp_path / 'images'}"))
  with pytest.raises(UserError, match=r"no annotations/instances_NAME.json in"):
    data.open_data(data_cfg(f"coco:{tmp_path}"))
  with pytest.raises(UserError, match="data.max_boxes must be positive"):
    data_cfg("digit_boxes", max_boxes=0)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
  """The embedded set written by the CLI command, 12 train and 4 test images of 64 px."""
  out = tmp_path_factory.mktemp("digit_boxes")
  assert cli.main(["make-detection-data", str(out), "--train", "12", "--test", "4", "--size", "64"]) == 0
  return out


def test_generated_set_round_trips_through_coco(generated):
  small = dict(digit_boxes_train=12, digit_boxes_test=4, digit_boxes_size=64)
  mem = data.open_data(data_cfg("digit_boxes", **small))
  disk = data.open_data(data_cfg(f"coco:{generated}", pp_train="decode|random_scale_crop(64)|flip",
                                 pp_eval="decode|letterbox(64)"))
  assert (generated / "preview.png").is_file() and Image.open(generated / "preview.png").size[0] > 64 * 4
  assert disk.class_names == mem.class_names == tuple("0123456789") and disk.category_ids == tuple(range(1, 11))
  assert set(disk.splits) == {"train", "test"} and disk.image_shape == mem.image_shape == (64, 64, 3)
  for name in ("train", "test"):
    a, b = mem.split(name), disk.split(name)
    assert len(a) == len(b) and len(a.ann.boxes) > len(a)  # several objects per image
    for i in range(len(a)):
      for train in (False, True):
        x, y = a.example(i, train, np.random.default_rng(i)), b.example(i, train, np.random.default_rng(i))
        for k in x:
          np.testing.assert_array_equal(x[k], y[k], err_msg=f"{name} {i} {k} train={train}")
    truth = b.coco_ground_truth()
    for g in truth["images"]:
      del g["file_name"]
    assert a.coco_ground_truth() == truth


def test_coco_2017_names_become_train_and_test(generated, tmp_path):
  (tmp_path / "annotations").mkdir()
  for ours, coco in (("train", "train2017"), ("test", "val2017")):
    link = tmp_path / "annotations" / f"instances_{coco}.json"
    link.symlink_to(generated / "annotations" / f"instances_{ours}.json")
    (tmp_path / coco).symlink_to(generated / ours)
  ds = data.open_data(data_cfg(f"coco:{tmp_path}", image_size=64))
  assert {k: len(v) for k, v in ds.splits.items()} == {"train": 12, "test": 4}
  assert ds.pp_eval == "decode|letterbox(64)" and ds.split("test").describe(0).endswith("val2017/000001.png")


def test_generated_set_is_deterministic_tight_and_split_by_glyph():
  (x, bx, cx), (y, by, cy) = synthetic.generate("train", 6, 64), synthetic.generate("train", 3, 64)
  np.testing.assert_array_equal(x[:3], y)  # image i depends on (seed, split, i) only
  assert all((p == q).all() for p, q in zip(bx[:3], by)) and all((p == q).all() for p, q in zip(cx[:3], cy))
  assert not np.array_equal(synthetic.generate("test", 3, 64)[0], y)
  assert {len(b) for b in bx} <= set(range(1, 7)) and all(((b >= 0) & (b <= 64)).all() for b in bx)
  train, test = synthetic.glyphs("train")[0], synthetic.glyphs("test")[0]
  assert len(train) + len(test) == 1797 and not (set(map(bytes, train)) & set(map(bytes, test)) - {bytes(64)})
  # Tight: each box's edge rows and columns hold glyph ink, i.e. pixels that differ from the bare canvas.
  rng = np.random.default_rng([0, 0, 0])
  bare = np.round(synthetic.canvas(rng, 64)).astype(np.uint8)
  ink = np.abs(x[0].astype(int) - bare).max(-1) > 10
  boxes = bx[0].astype(int)
  for k, (x0, y0, x1, y1) in enumerate(boxes):
    box = ink[y0:y1, x0:x1]
    assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
    outside = np.ones_like(ink)  # no ink just outside the box, but where other objects are
    outside[y0:y1, x0:x1] = False
    for j, (u0, v0, u1, v1) in enumerate(boxes):
      if j != k:
        outside[max(v0 - 1, 0):v1 + 1, max(u0 - 1, 0):u1 + 1] = False
    assert not ink[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1][outside[max(y0 - 1, 0):y1 + 1,
                                                                         max(x0 - 1, 0):x1 + 1]].any()


@needs_debian(os.path.isdir(sources.FASHION_MNIST_DIR), "dataset-fashion-mnist")
def test_fashion_mnist_glyphs():
  ds = data.open_data(data_cfg("digit_boxes", digit_boxes_glyphs="fashion_mnist", digit_boxes_train=3,
                               digit_boxes_test=2, digit_boxes_size=64))
  assert ds.class_names[0] == "T-shirt/top" and len(ds.class_names) == 10
  ex = ds.split("test").example(1, True, np.random.default_rng(0))
  assert ex["box_mask"].any() and ex["image"].shape == (64, 64, 3)
  assert synthetic.glyphs("test", "fashion_mnist")[0].shape == (10000, 28, 28)


def test_tfds_coco_records(monkeypatch):
  """tfds' coco builder module imports TensorFlow (not installed), and mock_data draws each field of a Sequence
  with its own length, so records shaped as tfds.data_source gives coco/2017's are served through mock_data's
  as_data_source_fn by a builder with the same features."""
  tfds = pytest.importorskip("tensorflow_datasets")

  class CocoLike(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      objects = {"id": np.int64, "area": np.int64, "bbox": tfds.features.BBoxFeature(),
                 "label": tfds.features.ClassLabel(names=["cat", "dog", "eel"]), "is_crowd": np.bool_}
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(encoding_format="jpeg"), "image/filename": tfds.features.Text(),
          "image/id": np.int64, "objects": tfds.features.Sequence(objects)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(), "validation": self._generate_examples()}

    def _generate_examples(self):
      yield from ()

  def record(image_id, h, w, bbox, label, crowd):
    n = len(label)
    return {"image": np.full((h, w, 3), 50, np.uint8), "image/id": image_id, "image/filename": b"x.jpg",
            "objects": {"bbox": np.array(bbox, np.float32).reshape(n, 4), "label": np.array(label, np.int64),
                        "is_crowd": np.array(crowd, bool), "area": np.full(n, 7, np.int64), "id": np.arange(n)}}

  records = [record(42, 50, 100, [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]], [2, 0], [False, True]),
             record(43, 20, 20, [], [], [])]
  with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: records):
    ds = data.open_data(data_cfg("tfds:coco_like", eval_split="validation", image_size=50))
  assert ds.class_names == ("cat", "dog", "eel") and ds.category_ids == (1, 2, 3)
  val = ds.split("validation")
  ex = val.example(0, False, None)  # letterbox(50) of 100x50: scale 0.5
  assert ex["box_mask"].sum() == 1 and ex["classes"][0] == 2 and ex["image_id"] == 42
  np.testing.assert_allclose(ex["boxes"][0], [10, 2.5, 30, 12.5], atol=1e-4)  # [ymin, xmin, ymax, xmax] -> x0, y0, ...
  assert val.example(1, True, np.random.default_rng(0))["box_mask"].sum() == 0
  gt = val.coco_ground_truth()
  assert [(g["image_id"], g["category_id"], g["bbox"], g["iscrowd"]) for g in gt["annotations"]] == [
      (42, 3, [20, 5, 40, 20], 0), (42, 1, [0, 0, 100, 50], 1)]
  assert data.coco.COCO_2017_CATEGORY_IDS[-1] == 90 and len(data.coco.COCO_2017_CATEGORY_IDS) == 80


def test_a_skipped_test_image_keeps_its_boxes_in_the_evaluation(tmp_path):
  """Perfect detections on the readable test images of a COCO folder score AP 1 when every image reads; with
  one image file gone under on_bad_image=skip, that image's boxes count as misses, so AP and recall drop."""
  synthetic.write_coco(str(tmp_path), (1, 6), 48)

  def score(on_bad_image):
    split = data.open_data(data_cfg(f"coco:{tmp_path}", on_bad_image=on_bad_image)).split("test")
    examples = [e for e in (split.example(i, False, None) for i in range(len(split))) if e is not None]
    perfect = {"boxes": np.stack([e["boxes"] for e in examples]),
               "scores": np.stack([e["box_mask"].astype(np.float32) for e in examples]),
               "classes": np.stack([e["classes"] for e in examples]),
               "num_detections": np.array([e["box_mask"].sum() for e in examples]),
               "image_id": np.array([e["image_id"] for e in examples]),
               "to_source": np.stack([e["to_source"] for e in examples])}
    return len(examples), detection.evaluate(perfect, split, None, None)[0]

  n, whole = score("error")
  assert n == 6 and whole["AP"] == pytest.approx(1.0) and whole["AR100"] == pytest.approx(1.0)
  (tmp_path / "test" / "000002.png").unlink()
  n, skipped = score("skip")
  assert n == 5 and skipped["AP"] < 0.95 and skipped["AR100"] < 0.95
