"""Detections from FCOS outputs, inside jit with static shapes: score every (point, class), keep the top
`pre_nms_topk`, build their boxes, suppress overlaps of the same class greedily (a fixed-size NMS written with
lax ops), drop scores under the threshold, and return a fixed number K of detections with a validity count.
"""
import jax
import jax.numpy as jnp
from jax import lax

from imgrec.tasks.detection import boxes as box_ops


def nms(boxes, scores, classes, valid, iou_threshold):
  """Greedy class-aware NMS of one image's candidates, sorted by descending score: [k] bool, True for a kept
  candidate. A candidate is dropped when a kept, higher-scored candidate of its class overlaps it with IoU
  above `iou_threshold`. k sequential steps of O(k) each; the IoU matrix is computed once."""
  k = boxes.shape[0]
  overlap = (box_ops.pairwise_iou(boxes, boxes) > iou_threshold) & (classes[:, None] == classes[None, :])
  earlier = jnp.arange(k)

  def step(i, keep):
    suppressed = jnp.any(keep & overlap[i] & (earlier < i))
    return keep.at[i].set(keep[i] & ~suppressed)

  return lax.fori_loop(0, k, step, valid)


def _decode_one(logits, ltrb, centerness, points, height, width, num_detections, pre_nms_topk, nms_iou,
                score_threshold):
  num_classes = logits.shape[-1]
  scores = jnp.sqrt(jax.nn.sigmoid(logits) * jax.nn.sigmoid(centerness)[:, None])
  k = min(pre_nms_topk, scores.size)
  top, flat = lax.top_k(scores.reshape(-1), k)
  point, cls = flat // num_classes, (flat % num_classes).astype(jnp.int32)
  xy, d = points[point, :2], ltrb[point]
  cand = box_ops.clip(jnp.concatenate([xy - d[:, :2], xy + d[:, 2:]], -1), height, width)
  keep = nms(cand, top, cls, top > score_threshold, nms_iou)
  n = min(num_detections, k)
  kept_scores, order = lax.top_k(jnp.where(keep, top, -1.0), n)  # kept ones first, still by score
  ok = kept_scores > -1.0
  pad = num_detections - n  # fewer candidates than K: pad with empty slots
  out_boxes = jnp.pad(jnp.where(ok[:, None], cand[order], 0.0), ((0, pad), (0, 0)))
  out_scores = jnp.pad(jnp.where(ok, kept_scores, 0.0), (0, pad))
  out_classes = jnp.pad(jnp.where(ok, cls[order], 0), (0, pad))
  return out_boxes, out_scores, out_classes, ok.sum().astype(jnp.int32)


def decode(outputs, height, width, num_detections=100, pre_nms_topk=1000, nms_iou=0.6, score_threshold=0.05):
  """FCOS outputs of a batch (model.FCOS) -> {"boxes" [B, K, 4] x0,y0,x1,y1 in the input image's pixels,
  "scores" [B, K], "classes" int32 [B, K], "num_detections" int32 [B]}; slots past the count are zeros."""
  fn = lambda lg, lt, c, p: _decode_one(lg, lt, c, p, height, width, num_detections, pre_nms_topk, nms_iou,
                                        score_threshold)
  b, s, c, n = jax.vmap(fn)(outputs["logits"], outputs["ltrb"], outputs["centerness"], outputs["points"])
  return {"boxes": b, "scores": s, "classes": c, "num_detections": n}
