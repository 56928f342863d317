"""Decoding: the fixed-size NMS against a plain numpy greedy NMS; boxes, classes and counts from FCOS outputs."""
import jax
import jax.numpy as jnp
import numpy as np

from imgrec.tasks.detection import decode


def numpy_nms(boxes, scores, classes, iou_threshold):
  """Textbook greedy NMS per class: indices kept, highest score first."""
  def iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union
  kept = []
  for i in np.argsort(-scores, kind="stable"):
    if all(classes[j] != classes[i] or iou(boxes[i], boxes[j]) <= iou_threshold for j in kept):
      kept.append(i)
  return kept


def test_nms_matches_numpy_greedy():
  rng = np.random.default_rng(0)
  nms = jax.jit(jax.vmap(decode.nms, in_axes=(0, 0, 0, 0, None)), static_argnums=4)
  k = 200
  xy = rng.uniform(0, 60, (4, k, 2))
  b = np.concatenate([xy, xy + rng.uniform(5, 30, (4, k, 2))], -1).astype(np.float32)
  s = rng.uniform(size=(4, k)).astype(np.float32)
  c = rng.integers(0, 3, (4, k)).astype(np.int32)
  order = np.argsort(-s, axis=1, kind="stable")  # nms expects candidates sorted by score
  b, s, c = [np.take_along_axis(a, order[..., None] if a.ndim == 3 else order, 1) for a in (b, s, c)]
  valid = s > 0.1
  keep = np.asarray(nms(b, s, c, valid, 0.5))
  total = 0
  for i in range(4):
    v = np.flatnonzero(valid[i])
    expected = v[numpy_nms(b[i][v], s[i][v], c[i][v], 0.5)]
    assert sorted(np.flatnonzero(keep[i])) == sorted(expected.tolist())
    total += len(expected)
  assert 20 < total < 0.9 * valid.sum()  # suppression did happen, and not of everything


def test_decode_boxes_classes_and_counts():
  # two images, 4 points, 3 classes; point centres (x, y, stride)
  points = np.float32([[8, 8, 8], [24, 8, 8], [8, 24, 8], [24, 24, 8]])
  logits = np.full((2, 4, 3), -10.0, np.float32)
  logits[0, 0, 2] = 5.0   # a confident class-2 box at point 0
  logits[0, 1, 2] = 4.0   # the same box again from point 1: suppressed by NMS
  logits[0, 3, 0] = 3.0   # a class-0 box at point 3
  ltrb = np.zeros((2, 4, 4), np.float32)
  ltrb[0, 0] = [4, 4, 12, 12]    # x0,y0,x1,y1 = 4, 4, 20, 20
  ltrb[0, 1] = [20, 4, -4, 12]   # the same box, from point (24, 8)
  ltrb[0, 3] = [30, 30, 30, 30]  # clipped to the 32x40 image
  outputs = {"logits": logits, "ltrb": ltrb, "centerness": np.full((2, 4), 10.0, np.float32),
             "points": np.broadcast_to(points, (2, 4, 3))}
  out = jax.jit(lambda o: decode.decode(o, 32, 40, num_detections=5, pre_nms_topk=6, score_threshold=0.3))(outputs)
  assert out["boxes"].shape == (2, 5, 4) and out["scores"].shape == (2, 5)
  assert out["classes"].dtype == jnp.int32
  np.testing.assert_array_equal(out["num_detections"], [2, 0])
  np.testing.assert_allclose(out["boxes"][0, :2], [[4, 4, 20, 20], [0, 0, 40, 32]], atol=1e-5)
  np.testing.assert_array_equal(out["classes"][0, :2], [2, 0])
  np.testing.assert_allclose(out["scores"][0, 0], np.sqrt(jax.nn.sigmoid(5.0) * jax.nn.sigmoid(10.0)), rtol=1e-5)
  assert not np.asarray(out["scores"][0, 2:]).any() and not np.asarray(out["boxes"][1]).any()
