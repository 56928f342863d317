"""The verification protocol on pair scores, in numpy: LFW's 10-fold accuracy, TAR at a FAR, EER, calibration.

A pair's score is the cosine of its two L2-normalised embeddings (each the sum of an image's embedding and its
mirror's, renormalised: `flip_embeddings`); a pair is accepted as "same" when its score is above a threshold.

  ten_fold(scores, same, folds)   the threshold that maximises accuracy on nine folds, accuracy on the tenth;
                                  mean and standard deviation over the ten (LFW View 2, insightface's
                                  eval/verification.py); thresholds are midpoints between sorted scores, not a grid
  threshold_at_far(scores, same, far)   the lowest threshold whose false-accept rate on these impostor pairs is
                                  at most `far` (the calibration a deployment saves with its run)
  tar_at_far, roc, eer            true-accept rate at a FAR; the ROC curve; the equal error rate
A FAR below 1 / (impostor pairs) cannot be measured: threshold_at_far then accepts no impostor pair at all, and
`summary` says how fine the FAR resolution of the pairs is.
"""
import numpy as np

from imgrec.errors import UserError

FARS = {"1e3": 1e-3, "1e4": 1e-4}  # the false-accept rates the record reports TAR at (key suffix: rate)


def l2_normalize(x, eps=1e-12):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def flip_embeddings(e, e_flipped):
  """An image's embedding with its mirror's: the normalised sum of the two normalised embeddings."""
  return l2_normalize(l2_normalize(e) + l2_normalize(e_flipped))


def pair_scores(embeddings, first, second):
  """Cosine similarity of the pairs (first[i], second[i]) of row indices into `embeddings` [N, D]."""
  e = l2_normalize(embeddings)
  return np.sum(e[first] * e[second], -1)


def _check(scores, same):
  scores, same = np.asarray(scores, np.float64), np.asarray(same, bool)
  if scores.shape != same.shape or scores.ndim != 1:
    raise ValueError(f"scores {scores.shape} and same {same.shape} must be one value per pair")
  if not same.any() or same.all():
    raise UserError(f"the verification pairs hold {int(same.sum())} matched and {int((~same).sum())} mismatched "
                    "pairs; the protocol needs both: check the pairs file (or use more held-out identities)")
  return scores, same


def best_threshold(scores, same):
  """(threshold, accuracy): the threshold among midpoints of the sorted scores (and below/above them all) with
  the highest accuracy of `score > threshold` == same; ties: the lowest such threshold."""
  s = np.sort(np.unique(scores))
  candidates = np.concatenate([[s[0] - 1e-6], (s[:-1] + s[1:]) / 2, [s[-1] + 1e-6]])
  order = np.argsort(scores, kind="stable")
  ss, sm = scores[order], same[order]
  # accepted = scores above t: correct = genuine above t + impostors at or below t
  below = np.searchsorted(ss, candidates, side="right")  # pairs with score <= t
  imp_below = np.concatenate([[0], np.cumsum(~sm)])[below]
  gen_above = same.sum() - np.concatenate([[0], np.cumsum(sm)])[below]
  acc = (imp_below + gen_above) / len(scores)
  i = int(np.argmax(acc))
  return float(candidates[i]), float(acc[i])


def ten_fold(scores, same, folds):
  """{"accuracy": mean, "accuracy_std": std, "fold_accuracy": [...], "thresholds": [...]}: per fold f, the
  threshold best on the other folds, scored on f. `folds`: the fold index of every pair."""
  scores, same = _check(scores, same)
  folds = np.asarray(folds)
  accs, thresholds = [], []
  for f in np.unique(folds):
    test = folds == f
    t, _ = best_threshold(scores[~test], same[~test])
    accs.append(float(np.mean((scores[test] > t) == same[test])))
    thresholds.append(t)
  return {"accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)), "fold_accuracy": accs,
          "thresholds": thresholds}


def threshold_at_far(scores, same, far):
  """The lowest threshold t with (impostor scores > t) / impostors <= far."""
  scores, same = _check(scores, same)
  impostors = np.sort(scores[~same])[::-1]
  allowed = int(np.floor(far * len(impostors)))  # impostor pairs that may pass
  return float(impostors[allowed]) if allowed < len(impostors) else float(impostors[-1] - 1e-6)


def tar_at_far(scores, same, far):
  """(TAR, threshold): the share of genuine pairs accepted at threshold_at_far."""
  t = threshold_at_far(scores, same, far)
  scores, same = np.asarray(scores), np.asarray(same, bool)
  return float(np.mean(scores[same] > t)), t


def roc(scores, same):
  """(FAR [n+1], TAR [n+1], thresholds [n+1]) sweeping the threshold down through every score."""
  scores, same = _check(scores, same)
  order = np.argsort(-scores, kind="stable")
  s, m = scores[order], same[order]
  tar = np.concatenate([[0], np.cumsum(m)]) / m.sum()
  far = np.concatenate([[0], np.cumsum(~m)]) / (~m).sum()
  return far, tar, np.concatenate([[np.inf], s])


def eer(scores, same):
  """The equal error rate: where the false-accept and false-reject rates cross (linearly interpolated)."""
  far, tar, _ = roc(scores, same)
  frr = 1.0 - tar
  i = int(np.argmax(far >= frr))  # the first point where FAR has caught up with FRR
  if i == 0:
    return float(far[0])
  d0, d1 = frr[i - 1] - far[i - 1], frr[i] - far[i]
  w = d0 / (d0 - d1) if d0 != d1 else 0.0
  return float(far[i - 1] + w * (far[i] - far[i - 1]))


def summary(scores, same, folds, calibrate_far=1e-3):
  """Everything the record and report hold of a set of pairs."""
  scores, same = _check(scores, same)
  out = ten_fold(scores, same, folds)
  for tag, far in FARS.items():
    out[f"tar_far{tag}"], out[f"threshold_far{tag}"] = tar_at_far(scores, same, far)
  t_cal = threshold_at_far(scores, same, calibrate_far)
  out.update(eer=eer(scores, same), pairs=int(len(scores)), matched=int(same.sum()),
             mismatched=int((~same).sum()), far_resolution=1.0 / int((~same).sum()),
             threshold=t_cal, threshold_far=calibrate_far,
             genuine_mean=float(scores[same].mean()), impostor_mean=float(scores[~same].mean()))
  return out
