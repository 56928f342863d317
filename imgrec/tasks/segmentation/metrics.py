"""Segmentation objective and scores: pixel cross-entropy with an ignore label, the confusion matrix (on device,
summed over batches), predictions warped back to the source's pixels, and mIoU from one confusion matrix.

Convention for classes absent from both prediction and ground truth of the whole split: their IoU is undefined
(0 / 0), reported as NaN (None in JSON) and left out of the mean; a class in the ground truth that is never
predicted counts with IoU 0, and one predicted but absent from the ground truth counts with IoU 0 too.
"""
import jax
import jax.numpy as jnp
import numpy as np

from imgrec.data.decode import IGNORE


def cross_entropy(logits, labels, ignore=IGNORE):
  """(mean softmax cross-entropy over the pixels whose label is not `ignore`, pixel accuracy over them):
  logits float [..., K], labels integer [...]. No labelled pixel gives a loss of 0."""
  labels = labels.astype(jnp.int32)
  valid = labels != ignore
  safe = jnp.where(valid, labels, 0)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  nll = -jnp.take_along_axis(logp, safe[..., None], -1)[..., 0]
  count = jnp.maximum(valid.sum(), 1)
  correct = (jnp.argmax(logits, -1) == safe) & valid
  return jnp.where(valid, nll, 0.0).sum() / count, correct.sum() / count


def confusion(pred, target, num_classes, valid):
  """int32 [K, K]: row = true class, column = predicted, counted over the pixels where `valid` (and the target is
  a class: not IGNORE)."""
  target = target.astype(jnp.int32)
  ok = valid & (target != IGNORE) & (target < num_classes)
  idx = jnp.where(ok, target * num_classes + pred.astype(jnp.int32), 0)
  counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[idx.ravel()].add(ok.ravel().astype(jnp.int32))
  return counts.reshape(num_classes, num_classes)


def _interp_1d(a, axis, n, scale, shift):
  """`a` sampled along `axis` at the n positions whose pixel centres map to (i + 0.5) * scale + shift in a's
  pixels (bilinear, half-pixel centres, clamped at the edges)."""
  size = a.shape[axis]
  pos = (jnp.arange(n) + 0.5) * scale + shift - 0.5
  i0 = jnp.floor(pos)
  f = pos - i0
  i0 = i0.astype(jnp.int32)
  lo, hi = jnp.clip(i0, 0, size - 1), jnp.clip(i0 + 1, 0, size - 1)
  shape = [1] * a.ndim
  shape[axis] = n
  f = f.reshape(shape)
  return jnp.take(a, lo, axis) * (1 - f) + jnp.take(a, hi, axis) * f


def to_source(logits, to_input, size):
  """int32 [B, size, size]: the class of each source-grid pixel, from the logits [B, h, w, K] at the model
  input, sampled (bilinear) where the pixel's centre lands through to_input [B, 4] (sx, sy, tx, ty: source grid
  -> input pixels); a source pixel outside the input (cropped away) takes the nearest edge's logits."""
  def one(args):
    lg, (sx, sy, tx, ty) = args
    rows = _interp_1d(lg, 0, size, sy, ty)
    return jnp.argmax(_interp_1d(rows, 1, size, sx, tx), -1).astype(jnp.int32)
  return jax.lax.map(one, (logits, to_input.astype(jnp.float32)))


def scores(matrix, class_names):
  """{"mIoU", "pixel_accuracy", "mean_accuracy", "per_class": {name: IoU or NaN}, "pixels"} of a confusion
  matrix (module doc: classes absent from both prediction and ground truth are NaN and left out of means)."""
  m = np.asarray(matrix, np.float64)
  tp = np.diag(m)
  truth, predicted = m.sum(1), m.sum(0)
  union = truth + predicted - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = np.where(union > 0, tp / union, np.nan)
    recall = np.where(truth > 0, tp / truth, np.nan)
  total = m.sum()
  mean = lambda v: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
  return {"mIoU": mean(iou), "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
          "mean_accuracy": mean(recall), "per_class": {n: float(v) for n, v in zip(class_names, iou)},
          "pixels": int(total)}
