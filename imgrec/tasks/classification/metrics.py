"""Classification metrics as pure numpy functions of (logits, labels).

Everything here works on host arrays of a whole split: evaluation gathers the logits of
every example first (imgrec/evaluate.py), so the numbers are exact, not batch averages.
Definitions follow scikit-learn's (zero division gives 0), which the tests check.
"""
import numpy as np


def log_softmax(logits):
  z = logits - logits.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits):
  return np.exp(log_softmax(logits))


def nll(logits, labels):
  """Mean negative log-likelihood (cross-entropy) of the true labels."""
  return float(-np.mean(log_softmax(np.asarray(logits, np.float64))[np.arange(len(labels)), labels]))


def top_k_accuracy(logits, labels, k):
  """Fraction of examples whose label is among the k highest scores."""
  k = min(k, logits.shape[-1])
  top = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
  return float(np.mean(np.any(top == labels[:, None], axis=-1)))


def confusion_matrix(labels, preds, num_classes):
  """C[i, j] = number of examples of true class i predicted as class j."""
  return np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes).reshape(
      num_classes, num_classes)


def per_class(confusion):
  """(precision, recall, f1, support) arrays, one entry per class, from a confusion matrix."""
  c = np.asarray(confusion, np.float64)
  tp = np.diag(c)
  predicted, support = c.sum(axis=0), c.sum(axis=1)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
  return precision, recall, f1, support.astype(np.int64)


def averages(precision, recall, f1, support):
  """Macro (plain mean over classes) and weighted (by support) averages."""
  w = support / max(support.sum(), 1)
  return {"macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
          "weighted": {"precision": float(precision @ w), "recall": float(recall @ w), "f1": float(f1 @ w)}}


def reliability(probs, labels, n_bins=15):
  """Per-bin (count, accuracy, mean confidence) of the top-class confidence.

  Bins are equal-width over [0, 1], right-closed: bin b holds confidences in (b/n, (b+1)/n].
  """
  conf = probs.max(axis=-1)
  correct = probs.argmax(axis=-1) == labels
  bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
  count = np.bincount(bins, minlength=n_bins)
  safe = np.maximum(count, 1)
  acc = np.bincount(bins, weights=correct, minlength=n_bins) / safe
  mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / safe
  return count, acc, mean_conf


def expected_calibration_error(probs, labels, n_bins=15):
  """ECE = sum over bins of (bin size / n) * |accuracy(bin) - mean confidence(bin)|."""
  count, acc, conf = reliability(probs, labels, n_bins)
  return float(np.sum(count / count.sum() * np.abs(acc - conf)))


def summary(logits, labels, class_names, n_bins=15):
  """Every metric of the report as a JSON-ready dict (plus the confusion matrix)."""
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels, np.int64)
  num_classes = len(class_names)
  probs = softmax(logits)
  preds = probs.argmax(axis=-1)
  confusion = confusion_matrix(labels, preds, num_classes)
  p, r, f1, support = per_class(confusion)
  count, acc, conf = reliability(probs, labels, n_bins)
  return {
      "examples": int(len(labels)),
      "accuracy": top_k_accuracy(logits, labels, 1),
      "top5_accuracy": top_k_accuracy(logits, labels, 5),
      "loss": nll(logits, labels),
      "ece": expected_calibration_error(probs, labels, n_bins),
      "per_class": [{"class": str(name), "precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]),
                     "support": int(support[i])} for i, name in enumerate(class_names)],
      **averages(p, r, f1, support),
      "confusion": confusion.tolist(),
      "reliability": {"bins": n_bins, "count": count.tolist(), "accuracy": acc.tolist(), "confidence": conf.tolist()},
  }
