"""Detection end to end: `imgrec train` of a tiny FCOS on a small generated digit_boxes set, with a val split
for selection on AP, then `imgrec eval` of the run and its report. One training, shared by the tests."""
import json
import os

import ml_collections
import pytest

from imgrec import cli, config, train, workdir as wd
from tests.helpers import assert_png

pytestmark = pytest.mark.slow


def tiny_detection_config():
  c = config.defaults()
  c.task = "detection"
  c.data.source = "digit_boxes"
  c.data.digit_boxes_train, c.data.digit_boxes_test, c.data.digit_boxes_size = 64, 16, 64
  c.data.max_boxes = 8
  c.data.val_fraction = 0.25
  c.data.prefetch = 0
  c.data.workers = 0
  c.model.name = "tiny"
  c.model.kwargs = ml_collections.ConfigDict()
  c.detection.fpn_channels, c.detection.head_convs, c.detection.levels = 16, 1, (3, 4, 5)
  c.detection.pre_nms_topk, c.detection.num_detections = 100, 20
  c.batch_size, c.steps, c.eval_every, c.log_every, c.checkpoint_every = 16, 12, 6, 6, 6
  c.select_metric = "AP"
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("detection"))
  _, result = train.train(tiny_detection_config(), workdir)
  return workdir, result


def test_training_records_ap_and_selects_on_it(run):
  workdir, result = run
  records = wd.read_metrics(workdir)
  train_records = [r for r in records if r["split"] == "train"]
  val = [r for r in records if r["split"] == "val"]
  assert [r["step"] for r in val] == [6, 12]
  assert {"loss_cls", "loss_box", "loss_ctr", "positives"} <= set(train_records[0])
  assert train_records[-1]["loss"] < train_records[0]["loss"]
  for r in val:
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"} <= set(r) and 0 <= r["AP"] <= 1
  best = max(val, key=lambda r: r["AP"])  # the first of equals, as selection keeps the earlier
  assert os.listdir(os.path.join(workdir, "best")) == [str(best["step"])]
  assert result["split"] == "test" and 0 <= result["AP"] <= 1 and result["examples"] == 16


def test_imgrec_eval_writes_the_report(run, capsys):
  workdir, result = run
  assert cli.main(["eval", "--workdir", workdir, "--json"]) == 0
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  report = os.path.join(workdir, "report")
  # the selected model, as training's final test evaluation saw it
  best = max((r for r in wd.read_metrics(workdir) if r["split"] == "val"), key=lambda r: r["AP"])
  assert out["split"] == "test" and out["step"] == best["step"] and out["AP"] == pytest.approx(result["AP"])
  with open(os.path.join(report, "metrics.json")) as f:
    metrics = json.load(f)
  assert metrics["AP"] == pytest.approx(out["AP"]) and 0 <= out["AP"] <= 1
  assert metrics["examples"] == 16 and set(metrics["per_class"]) == {str(d) for d in range(10)}
  assert "| AP |" in open(os.path.join(report, "report.md")).read()
  assert_png(os.path.join(report, "detections.png"))
  assert_png(os.path.join(report, "precision_recall.png"))


def test_imgrec_eval_on_a_coco_folder_of_its_classes(run, tmp_path, capsys):
  """The run's own test images written as a COCO folder (`make-detection-data`, same size), scored with the run's
  eval preprocessing (letterbox(64), not coco:'s default 512): the run's AP. With one image file gone and
  data.on_bad_image=skip, that image is skipped and its boxes count as misses."""
  workdir, _ = run
  folder = tmp_path / "coco"
  assert cli.main(["make-detection-data", str(folder), "--train", "1", "--test", "16", "--size", "64"]) == 0
  eval_json = lambda *extra: (cli.main(["eval", "--workdir", workdir, "--json", *extra]),
                              json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
  code, own = eval_json()
  assert code == 0
  code, coco = eval_json(f"--config.data.source=coco:{folder}")
  assert code == 0 and coco["examples"] == 16 and coco["AP"] == pytest.approx(own["AP"], abs=1e-4)
  assert coco["AR100"] == pytest.approx(own["AR100"], abs=1e-4)
  (folder / "test" / "000001.png").unlink()
  code, skipped = eval_json(f"--config.data.source=coco:{folder}", "--config.data.on_bad_image=skip")
  assert code == 0 and skipped["examples"] == 15
  assert skipped["AR100"] <= coco["AR100"]  # fewer detections against the same boxes
