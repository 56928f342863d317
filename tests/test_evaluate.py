"""Metrics against scikit-learn, ECE by hand, and the `imgrec eval` report on a trained workdir."""
import json
import os

import numpy as np
import pytest
from sklearn import metrics as skm

from imgrec.tasks.classification import metrics
from tests.helpers import assert_png


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed):
  rng = np.random.default_rng(seed)
  k, n = 7, 500
  labels = rng.integers(0, k, n)
  labels[labels == 6] = 5  # class 6 never occurs: exercises zero support (0, as scikit-learn)
  logits = rng.normal(size=(n, k))
  logits[np.arange(n), labels] += rng.uniform(0, 2, n)  # better than chance, not perfect
  preds = logits.argmax(-1)
  cm = metrics.confusion_matrix(labels, preds, k)
  np.testing.assert_array_equal(cm, skm.confusion_matrix(labels, preds, labels=range(k)))
  p, r, f1, s = metrics.per_class(cm)
  sp, sr, sf, ss = skm.precision_recall_fscore_support(labels, preds, labels=range(k), zero_division=0)
  for a, b in ((p, sp), (r, sr), (f1, sf)):
    np.testing.assert_allclose(a, b, atol=1e-12)
  np.testing.assert_array_equal(s, ss)
  avg = metrics.averages(p, r, f1, s)
  for kind in ("macro", "weighted"):
    ref = skm.precision_recall_fscore_support(labels, preds, labels=range(k), average=kind, zero_division=0)
    np.testing.assert_allclose([avg[kind]["precision"], avg[kind]["recall"], avg[kind]["f1"]], ref[:3], atol=1e-12)
  for top in (1, 3, 5):
    assert metrics.top_k_accuracy(logits, labels, top) == pytest.approx(
        skm.top_k_accuracy_score(labels, logits, k=top, labels=range(k)), abs=1e-12)
  probs = metrics.softmax(logits)
  assert metrics.nll(logits, labels) == pytest.approx(skm.log_loss(labels, probs, labels=range(k)), abs=1e-9)


def test_ece_hand_computed():
  # Two-class probabilities; top-class confidences 0.9, 0.9, 0.6, 0.55 with 15 bins:
  # 0.9 -> bin (13/15, 14/15], 0.6 and 0.55 -> bin (8/15, 9/15].
  probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.45, 0.55]])
  labels = np.array([0, 0, 0, 0])  # correct, wrong, correct, wrong
  # bin A: accuracy 1/2, confidence 0.9; bin B: accuracy 1/2, confidence 0.575
  expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(0.5 - 0.575)
  assert metrics.expected_calibration_error(probs, labels, 15) == pytest.approx(expected, abs=1e-12)
  assert metrics.expected_calibration_error(np.eye(3), np.arange(3)) == 0.0  # confident and right


def test_eval_cli_writes_report(trained_workdir, capsys):
  from imgrec import cli
  assert cli.main(["eval", "--workdir", trained_workdir, "--json", "--tta"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert {"split", "accuracy", "loss", "examples", "top5_accuracy", "ece", "macro_f1"} <= set(summary)
  assert summary["split"] == "test" and summary["examples"] == 359 and summary["tta"]
  assert summary["accuracy"] > 0.5 and summary["top5_accuracy"] >= summary["accuracy"]
  out = os.path.join(trained_workdir, "report")
  for name in ("metrics.json", "report.md", "confusion.png", "reliability.png", "per_class.png", "mistakes.png"):
    assert os.path.getsize(os.path.join(out, name)) > 1000, name
  for name in ("confusion.png", "reliability.png", "per_class.png", "mistakes.png"):
    assert_png(os.path.join(out, name), 400, 400)
  with open(os.path.join(out, "metrics.json")) as f:
    saved = json.load(f)
  cm = np.array(saved["confusion"])
  assert cm.sum() == 359 and np.trace(cm) / 359 == pytest.approx(summary["accuracy"])
  assert "![confusion](confusion.png)" in open(os.path.join(out, "report.md")).read()


def test_eval_matches_training_eval_and_rejects_bad_split(trained_workdir):
  from imgrec import evaluate
  from imgrec.errors import UserError
  result = evaluate.evaluate_workdir(trained_workdir, report=False)
  with open(os.path.join(trained_workdir, "metrics.jsonl")) as f:
    last = [json.loads(line) for line in f][-1]
  assert result["accuracy"] == pytest.approx(last["accuracy"]) and result["loss"] == pytest.approx(last["loss"], rel=1e-4)
  with pytest.raises(UserError, match="no split"):
    evaluate.evaluate_workdir(trained_workdir, split="validation", report=False)


def test_tta_averages_the_softmax_of_each_image_and_its_mirror(trained_workdir):
  """`--tta` against a hand computation: log of the mean of softmax(image) and softmax(mirrored image)."""
  from imgrec import evaluate, state as train_state, steps, workdir as wd
  from imgrec.data import sources
  run = wd.restore(trained_workdir)
  images, labels = sources.load(run.cfg.data).split("test").get(np.arange(359))
  apply = lambda x: np.asarray(run.model.apply(train_state.variables(run.state), steps.normalize(
      x, run.info["mean"], run.info["std"]), train=False), np.float64)
  plain = metrics.softmax(apply(images))
  probs = (plain + metrics.softmax(apply(images[:, :, ::-1]))) / 2
  expected_loss = float(-np.log(probs[np.arange(len(labels)), labels]).mean())
  tta = evaluate.evaluate_workdir(trained_workdir, tta=True, report=False)
  assert tta["loss"] == pytest.approx(expected_loss, rel=1e-4)
  assert tta["accuracy"] == pytest.approx(float((probs.argmax(-1) == labels).mean()))
  plain_loss = float(-np.log(plain[np.arange(len(labels)), labels]).mean())
  assert abs(plain_loss - expected_loss) > 1e-2  # control: the mirror changes the number checked above
