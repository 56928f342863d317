"""The verification protocol (imgrec/tasks/verification/protocol.py): 10-fold accuracy, TAR at FAR, EER, ROC,
against brute force and scikit-learn; the report's PNGs."""
import numpy as np
import pytest
from sklearn import metrics as skm

from imgrec.errors import UserError
from imgrec.tasks.verification import plots, protocol


def _pairs(seed, n=600, gap=1.0):
  rng = np.random.default_rng(seed)
  same = np.arange(n) % 2 == 0
  scores = rng.normal(size=n) * 0.3 + np.where(same, gap * 0.5, 0.0)
  return scores, same


def test_best_threshold_is_the_brute_force_best():
  scores, same = _pairs(0, 200)
  t, acc = protocol.best_threshold(scores, same)
  grid = np.linspace(scores.min() - 1, scores.max() + 1, 20001)
  brute = max(np.mean((scores > g) == same) for g in grid)
  assert acc == pytest.approx(brute)
  assert np.mean((scores > t) == same) == pytest.approx(acc)


def test_ten_fold_picks_the_threshold_on_the_other_nine_folds():
  scores, same = _pairs(1)
  folds = np.arange(len(scores)) // 60
  r = protocol.ten_fold(scores, same, folds)
  for f in range(10):
    t, _ = protocol.best_threshold(scores[folds != f], same[folds != f])
    assert r["thresholds"][f] == t
    assert r["fold_accuracy"][f] == np.mean((scores[folds == f] > t) == same[folds == f])
  assert r["accuracy"] == pytest.approx(np.mean(r["fold_accuracy"]))
  assert r["accuracy_std"] == pytest.approx(np.std(r["fold_accuracy"]))
  assert 0.7 < r["accuracy"] < 0.95  # overlapping classes: neither chance nor perfect
  sep = protocol.ten_fold(np.where(same, 0.9, 0.1), same, folds)
  assert sep["accuracy"] == 1.0 and sep["accuracy_std"] == 0.0


def test_tar_at_far_lets_through_at_most_that_share_of_impostors():
  rng = np.random.default_rng(2)
  same = np.r_[np.ones(500, bool), np.zeros(5000, bool)]
  scores = np.where(same, rng.normal(0.6, 0.2, len(same)), rng.normal(0.0, 0.2, len(same)))
  for far in (1e-3, 1e-2, 0.1):
    tar, t = protocol.tar_at_far(scores, same, far)
    assert np.sum(scores[~same] > t) == int(far * 5000)  # as many as allowed, no more
    assert tar == np.mean(scores[same] > t)
  # below the resolution (1 / 5000 impostors): no impostor at all
  tar, t = protocol.tar_at_far(scores, same, 1e-5)
  assert np.sum(scores[~same] > t) == 0 and t >= scores[~same].max()


def test_roc_and_eer_agree_with_scikit_learn():
  scores, same = _pairs(3, 1000, gap=0.8)
  far, tar, _ = protocol.roc(scores, same)
  fpr, tpr, _ = skm.roc_curve(same, scores, drop_intermediate=False)
  np.testing.assert_allclose(far[-len(fpr):][1:], fpr[1:])
  np.testing.assert_allclose(tar[-len(tpr):][1:], tpr[1:])
  eer = protocol.eer(scores, same)
  fnr = 1 - tpr
  i = np.nanargmin(np.abs(fnr - fpr))
  assert abs(eer - (fpr[i] + fnr[i]) / 2) < 0.01
  assert 0.1 < eer < 0.4


def test_flip_embeddings_and_pair_scores():
  e = np.array([[3.0, 0.0], [0.0, 2.0]])
  f = protocol.flip_embeddings(e, e[::-1])
  np.testing.assert_allclose(f, [[2 ** -0.5, 2 ** -0.5]] * 2)
  s = protocol.pair_scores(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 5.0]]), [0, 0], [1, 2])
  np.testing.assert_allclose(s, [1.0, 0.0])


def test_summary_refuses_pairs_of_one_kind_and_plots(tmp_path):
  scores, same = _pairs(4)
  with pytest.raises(UserError, match="matched and"):
    protocol.summary(scores[same], same[same], np.zeros(same.sum()))
  s = protocol.summary(scores, same, np.arange(len(scores)) % 10)
  assert s["far_resolution"] == 1 / 300 and s["threshold_far"] == 1e-3
  assert s["tar_far1e4"] <= s["tar_far1e3"]
  plots.plot_roc(scores, same, tmp_path / "roc.png", s)
  plots.plot_histogram(scores, same, tmp_path / "hist.png", s)
  for name in ("roc.png", "hist.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
