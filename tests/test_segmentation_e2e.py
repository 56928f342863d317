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
