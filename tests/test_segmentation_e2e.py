"""Segmentation end to end: `imgrec train` of a tiny FCN on a small digit_masks set with a val split for
selection on mIoU (the eval's confusion matrix summed on device), then `imgrec eval` and its report. One
training, shared by the tests."""
import json
import os

import ml_collections
import pytest

from imgrec import cli, config, train, workdir as wd
from tests.helpers import assert_png

pytestmark = pytest.mark.slow


def tiny_segmentation_config():
  c = config.defaults()
  c.task = "segmentation"
  c.data.source = "digit_masks"
  c.data.digit_masks_train, c.data.digit_masks_test, c.data.digit_masks_size = 48, 12, 64
  c.data.pp_train = "decode|random_scale_crop(64, scale=(0.8, 1.2))"
  c.data.val_fraction = 0.25
  c.data.prefetch = 0
  c.data.workers = 0
  c.model.name = "tiny"
  c.model.kwargs = ml_collections.ConfigDict()
  c.segmentation.feature_stride, c.segmentation.channels = 8, 16
  c.batch_size, c.steps, c.eval_every, c.log_every, c.checkpoint_every = 12, 8, 4, 4, 4
  c.select_metric = "mIoU"
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("segmentation"))
  _, result = train.train(tiny_segmentation_config(), workdir)
  return workdir, result


def test_training_records_miou_and_selects_on_it(run):
  workdir, result = run
  records = wd.read_metrics(workdir)
  train_records = [r for r in records if r["split"] == "train"]
  val = [r for r in records if r["split"] == "val"]
  assert [r["step"] for r in val] == [4, 8]
  assert "pixel_accuracy" in train_records[0] and train_records[-1]["loss"] < train_records[0]["loss"]
  for r in val:
    assert {"mIoU", "pixel_accuracy", "mean_accuracy"} <= set(r) and 0 <= r["mIoU"] <= 1 and r["examples"] == 12
  best = max(val, key=lambda r: r["mIoU"])
  assert os.listdir(os.path.join(workdir, "best")) == [str(best["step"])]
  assert result["split"] == "test" and 0 <= result["mIoU"] <= 1 and result["examples"] == 12


def test_imgrec_eval_writes_the_report(run, capsys):
  workdir, result = run
  assert cli.main(["eval", "--workdir", workdir, "--json"]) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out["split"] == "test" and out["mIoU"] == pytest.approx(result["mIoU"])
  report = os.path.join(workdir, "report")
  with open(os.path.join(report, "metrics.json")) as f:
    metrics = json.load(f)
  assert metrics["mIoU"] == pytest.approx(out["mIoU"]) and len(metrics["per_class"]) == 11
  assert metrics["pixels"] == 12 * 64 * 64  # every source pixel of the test split, once
  assert "| mIoU |" in open(os.path.join(report, "report.md")).read()
  for name in ("overlays.png", "class_iou.png", "confusion.png"):
    assert_png(os.path.join(report, name))


def test_served_and_exported(run, tmp_path):
  """The trained run served for real on 127.0.0.1: an upload of another size answers its class map in the
  upload's own pixels (JSON with a PNG mask, or the PNG itself when Accept asks), OIP v2 gives the
  `segmentation` INT32 [B, H, W] output; the export carries the head and gives the same maps."""
  import base64
  import io

  import numpy as np
  import requests
  from PIL import Image

  from imgrec import export
  from imgrec.serve import app as app_lib
  from tests.test_serve import png, running_server

  workdir, _ = run
  rng = np.random.default_rng(0)
  upload = rng.integers(0, 255, (50, 80, 3), np.uint8)  # not the model's 64 x 64: letterboxed, mapped back
  options = app_lib.Options(batch_sizes=(1, 2), max_delay_ms=2, timeout_s=60)
  with running_server([("seg", None, workdir)], options) as (url, _):
    r = requests.post(url + "/v1/models/seg:predict", data=png(upload), timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(out["mask_png"]))))
    assert (out["width"], out["height"]) == (80, 50) and mask.shape == (50, 80)
    assert sum(out["counts"].values()) == int((mask != 255).sum()) > 0
    as_png = requests.post(url + "/v1/models/seg:predict", data=png(upload), headers={"Accept": "image/png"},
                           timeout=60)
    assert as_png.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(as_png.content))), mask)
    images = rng.integers(0, 255, (2, 64, 64, 3), np.uint8)
    body = {"inputs": [{"name": "images", "shape": [2, 64, 64, 3], "datatype": "UINT8",
                        "data": images.ravel().tolist()}]}
    v2 = requests.post(url + "/v2/models/seg/infer", json=body, timeout=60).json()["outputs"]
    assert [(o["name"], o["datatype"], o["shape"]) for o in v2] == [("segmentation", "INT32", [2, 64, 64])]
  export.export_workdir(workdir, str(tmp_path / "seg.zip"), ("cpu",))
  got = export.load(str(tmp_path / "seg.zip"))(images)
  np.testing.assert_array_equal(np.asarray(got["segmentation"]).ravel(), v2[0]["data"])
