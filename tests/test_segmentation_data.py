"""Segmentation data: the embedded digit_masks set, seg:DIR in its three layouts, a tfds set under mock_data,
and bad input (a missing mask, a mask of another size, class ids out of range)."""
import os

import numpy as np
import pytest
from PIL import Image

from imgrec import config
from imgrec.errors import UserError
from imgrec.tasks import segmentation as task
from imgrec.tasks.segmentation import data, layouts, synthetic


def seg_cfg(source, **keys):
  """The full default config for the segmentation task on `source`, with data or segmentation keys set."""
  cfg = config.defaults()
  cfg.task, cfg.data.source, cfg.data.workers, cfg.data.test_fraction = task.NAME, source, 0, 0.25
  cfg.model.name = "tiny"
  for k, v in keys.items():
    (cfg.segmentation if k in cfg.segmentation else cfg.data)[k] = v
  return cfg


def png(path, a, palette=False):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  im = Image.fromarray(a)
  if palette:
    im = im.convert("P") if a.ndim == 3 else Image.fromarray(a, "L").convert("P")
    im.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
    im = Image.fromarray(a).quantize() if a.ndim == 3 else _palette(a)
  im.save(path)


def _palette(a):
  im = Image.new("P", (a.shape[1], a.shape[0]))
  im.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)])
  im.putdata(a.ravel().tolist())
  return im


def test_digit_masks_examples():
  ds = data.open_data(seg_cfg("digit_masks", digit_masks_train=6, digit_masks_test=4, digit_masks_size=64))
  assert ds.class_names == synthetic.CLASS_NAMES and ds.image_shape == (64, 64, 3)
  test = ds.split("test")
  assert len(test) == 4 and test.spec["source_labels"][0] == (64, 64)
  ex = test.example(0, False, None)  # letterbox(64) of a 64 px canvas: the identity
  np.testing.assert_array_equal(ex["labels"], test.items.labels[0])
  np.testing.assert_array_equal(ex["source_labels"], test.items.labels[0])
  np.testing.assert_allclose(ex["to_input"], [1, 1, 0, 0])
  assert set(np.unique(ex["labels"])) - {0} and set(np.unique(ex["labels"])) <= set(range(11))
  for k in range(4):  # training: scale jitter pads with 255 (ignored), flips move labels and pixels together
    tr = ds.split("train").example(k, True, np.random.default_rng(k))
    assert {n: (v.shape, v.dtype) for n, v in tr.items()} == {n: s for n, s in ds.split("train").spec.items()}
  # Glyph pixels differ from the canvas: the labelled pixels of an image stand out from its background.
  img, lab = test.items.images[1].astype(float), test.items.labels[1]
  assert np.abs(img[lab > 0].mean(0) - img[lab == 0].mean(0)).max() > 40


def test_synthetic_train_test_glyphs_disjoint_and_deterministic():
  a, la = synthetic.generate("train", 3, 64)
  b, lb = synthetic.generate("train", 5, 64)
  np.testing.assert_array_equal(a, b[:3])
  np.testing.assert_array_equal(la, lb[:3])
  from imgrec.tasks.detection import synthetic as boxes
  train, test = boxes.glyphs("train")[0], boxes.glyphs("test")[0]
  assert not ({t.tobytes() for t in train} & {t.tobytes() for t in test}) or len(train) + len(test) == 1797


def test_make_data_folder_reads_back(tmp_path):
  counts = synthetic.write_folder(str(tmp_path), (5, 3), 48)
  assert counts["train"] > 0 and os.path.isfile(tmp_path / "preview.png")
  ds = data.open_data(seg_cfg(f"seg:{tmp_path}"))
  assert ds.class_names == synthetic.CLASS_NAMES and ds.image_shape == (48, 48, 3)
  assert len(ds.split("train")) == 5 and len(ds.split("test")) == 3
  _, labels = synthetic.generate("test", 3, 48)
  for i in range(3):
    ex = ds.split("test").example(i, False, None)
    np.testing.assert_array_equal(ex["source_labels"], labels[i])
    np.testing.assert_array_equal(ex["labels"], labels[i])


def _plain(tmp_path, n=4, size=(20, 30), classes=True):
  rng = np.random.default_rng(0)
  for i in range(n):
    png(str(tmp_path / "images" / f"im{i}.png"), rng.integers(0, 255, (*size, 3)).astype(np.uint8))
    m = rng.integers(0, 3, size).astype(np.uint8)
    m[0, 0] = 255
    png(str(tmp_path / "masks" / f"im{i}.png"), m)
  if classes:
    (tmp_path / "classes.txt").write_text("sky\nroad\ncar\n")


def test_plain_layout_holdout_and_names(tmp_path):
  _plain(tmp_path, n=8)
  ds = data.open_data(seg_cfg(f"seg:{tmp_path}", image_size=32))
  assert ds.class_names == ("sky", "road", "car") and len(ds.split("train")) == 6 and len(ds.split("test")) == 2
  ex = ds.split("test").example(0, False, None)
  assert ex["image"].shape == (32, 32, 3) and ex["source_labels"].shape == (30, 30)
  assert ex["source_labels"][0, 0] == 255 and (ex["source_labels"][20:] == 255).all()  # padded: ignored
  # letterbox(32) of 30x20: scale 32/30; the label map moved as the image did, 255 below the image
  assert (ex["labels"][22:] == 255).all() and ex["labels"][0, 0] == 255


def test_plain_layout_without_names_counts_classes(tmp_path):
  _plain(tmp_path, classes=False)
  (tmp_path / "train.txt").write_text("im0\nim1\nim2\n")
  (tmp_path / "test.txt").write_text("im3\n")
  ds = data.open_data(seg_cfg(f"seg:{tmp_path}", image_size=32))
  assert ds.class_names == ("class_0", "class_1", "class_2") and len(ds.split("test")) == 1


def test_voc_layout_palette_masks(tmp_path):
  rng = np.random.default_rng(1)
  for i, split in enumerate(("train", "train", "val")):
    stem = f"2007_00000{i}"
    Image.fromarray(rng.integers(0, 255, (24, 16, 3)).astype(np.uint8)).save(tmp_path / f"{stem}.jpg")
    os.makedirs(tmp_path / "JPEGImages", exist_ok=True)
    os.replace(tmp_path / f"{stem}.jpg", tmp_path / "JPEGImages" / f"{stem}.jpg")
    m = np.zeros((24, 16), np.uint8)
    m[4:12, 4:10] = 15  # person
    m[3, 3:11] = 255    # VOC's object border
    os.makedirs(tmp_path / "SegmentationClass", exist_ok=True)
    _palette(m).save(tmp_path / "SegmentationClass" / f"{stem}.png")
    os.makedirs(tmp_path / "ImageSets" / "Segmentation", exist_ok=True)
    with open(tmp_path / "ImageSets" / "Segmentation" / f"{split}.txt", "a") as f:
      f.write(stem + "\n")
  ds = data.open_data(seg_cfg(f"seg:{tmp_path}", image_size=24))
  assert ds.class_names == layouts.VOC_CLASSES and len(ds.split("train")) == 2 and len(ds.split("test")) == 1
  ex = ds.split("test").example(0, False, None)
  assert ex["source_labels"][5, 5] == 15 and ex["source_labels"][3, 4] == 255 and ex["source_labels"][0, 0] == 0


def test_ade_layout_shifts_classes(tmp_path):
  for s in ("training", "validation"):
    png(str(tmp_path / "images" / s / "ADE_1.jpg"), np.full((10, 12, 3), 90, np.uint8))
    m = np.zeros((10, 12), np.uint8)
    m[2:5, 2:5] = 1
    m[6:, 6:] = 150
    png(str(tmp_path / "annotations" / s / "ADE_1.png"), m)
  ds = data.open_data(seg_cfg(f"seg:{tmp_path}", image_size=12))
  assert len(ds.class_names) == 150 and ds.class_names[0] == "class_0"
  src = ds.split("test").example(0, False, None)["source_labels"]
  assert src[0, 0] == 255 and src[3, 3] == 0 and src[7, 7] == 149


def test_missing_mask_error_or_skip(tmp_path):
  _plain(tmp_path)
  os.remove(tmp_path / "masks" / "im2.png")
  with pytest.raises(UserError, match=r"no mask .*im2\.png.*on_bad_image=skip"):
    data.open_data(seg_cfg(f"seg:{tmp_path}", image_size=32))
  ds = data.open_data(seg_cfg(f"seg:{tmp_path}", image_size=32, on_bad_image="skip"))
  assert len(ds.split("train")) + len(ds.split("test")) == 3


def test_mask_of_another_size_and_bad_ids(tmp_path):
  _plain(tmp_path)
  png(str(tmp_path / "masks" / "im1.png"), np.zeros((10, 10), np.uint8))
  m = np.zeros((20, 30), np.uint8)
  m[5, 5] = 7
  png(str(tmp_path / "masks" / "im3.png"), m)
  (tmp_path / "train.txt").write_text("im0\nim1\nim3\n")
  ds = data.open_data(seg_cfg(f"seg:{tmp_path}", image_size=32))
  tr = ds.split("train")
  assert tr.example(0, False, None) is not None
  with pytest.raises(UserError, match=r"im1\.png is 10x10, the image 30x20"):
    tr.example(1, False, None)
  with pytest.raises(UserError, match=r"im3\.png has class id 7 but there are 3 classes"):
    tr.example(2, False, None)
  skip = data.open_data(seg_cfg(f"seg:{tmp_path}", image_size=32, on_bad_image="skip")).split("train")
  assert skip.example(1, False, None) is None and skip.example(2, True, np.random.default_rng(0)) is None


def test_rgb_mask_refused(tmp_path):
  _plain(tmp_path)
  png(str(tmp_path / "masks" / "im0.png"), np.zeros((20, 30, 3), np.uint8))
  (tmp_path / "train.txt").write_text("im0\n")
  with pytest.raises(UserError, match="RGB image; masks hold class ids"):
    data.open_data(seg_cfg(f"seg:{tmp_path}", image_size=32)).split("train").example(0, False, None)


def test_large_source_scored_on_reduced_grid():
  labels = np.zeros((40, 100), np.uint8)
  labels[:, 50:] = 1
  grid, r = data.source_grid(labels, 50)
  assert r == 0.5 and grid.shape == (50, 50) and (grid[20:] == 255).all()
  assert (grid[:20, :25] == 0).all() and (grid[:20, 25:] == 1).all()


def test_tfds_pets_under_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")

  def record(h, w):
    trimap = np.full((h, w, 1), 2, np.uint8)  # background
    trimap[2:6, 3:8] = 1                      # pet
    trimap[2, 3:8] = 3                        # border: ignored
    return {"image": np.full((h, w, 3), 70, np.uint8), "segmentation_mask": trimap, "label": 0, "species": 0,
            "file_name": "x.jpg", "head_bbox": np.zeros(4, np.float32)}

  with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: [record(10, 12), record(8, 8)]):
    ds = data.open_data(seg_cfg("tfds:oxford_iiit_pet", image_size=16, eval_size=16))  # sizes vary
  assert ds.class_names == ("background", "pet")
  ex = ds.split("test").example(0, False, None)
  src = ex["source_labels"]
  assert src[0, 0] == 0 and src[4, 4] == 1 and src[2, 4] == 255 and src.shape == (16, 16)
  assert ex["labels"].shape == (16, 16)


def test_bad_sources():
  with pytest.raises(UserError, match="unknown segmentation data source"):
    data.open_data(seg_cfg("digits"))
  with pytest.raises(UserError, match="not found"):
    data.open_data(seg_cfg("seg:/nonexistent/x"))
  with pytest.raises(UserError, match="one fixed input size"):
    data.open_data(seg_cfg("digit_masks", pp_train="decode", pp_eval="decode", digit_masks_train=1,
                           digit_masks_test=1))


def test_make_segmentation_data_command(tmp_path, capsys):
  from imgrec import cli
  out = tmp_path / "seg"
  assert cli.main(["make-segmentation-data", str(out), "--train", "3", "--test", "2", "--size", "48"]) == 0
  assert f"seg:{out}" in capsys.readouterr().out
  assert sorted(os.listdir(out)) == ["classes.txt", "images", "masks", "preview.png", "test.txt", "train.txt"]
  assert cli.main(["make-segmentation-data", str(out), "--train", "3"]) != 0  # never overwrites
  assert "already holds files" in capsys.readouterr().err


def test_settings_are_validated():
  for key, value, message in (("head", "unet", "segmentation.head must be one of fcn, aspp"),
                              ("feature_stride", 12, "power of two"), ("aspp_rates", (0, 2), "aspp_rates"),
                              ("eval_size", 4, "eval_size must be at least 8"), ("dropout", 1.0, "dropout"),
                              ("digit_masks_size", 16, "digit_masks_size >= 32")):
    with pytest.raises(UserError, match=message):
      task.validate(seg_cfg("digit_masks", **{key: value}))
  task.validate(seg_cfg("digit_masks"))
  assert task.DEFAULT_SELECT in task.SELECT and set(task.MAY_CHANGE) <= {"segmentation.eval_size",
                                                                         "data.digit_masks_test"}
