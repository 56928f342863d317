"""Boxes moved with the pixels: host preprocessing's affine map applied to boxes, clipping, padding.

Boxes are float [N, 4] x0, y0, x1, y1 in continuous pixel coordinates (pixel i spans [i, i + 1)). The map
(sx, sy, tx, ty) is the one `imgrec.data.preprocess.process_with_map` returns: source (x, y) lands at
(x * sx + tx, y * sy + ty); sx < 0 when the image was flipped, which swaps a box's left and right edges.
"""
import numpy as np

# A box is kept when at least this share of its (transformed) area is still inside the output image:
# a crop that leaves less than a quarter of an object would teach the detector to call slivers objects.
MIN_VISIBLE = 0.25


def apply_affine(boxes, affine):
  """Source boxes -> output boxes under the map (sx, sy, tx, ty); edges re-ordered after a flip."""
  sx, sy, tx, ty = affine
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  xs = boxes[:, [0, 2]] * sx + tx
  ys = boxes[:, [1, 3]] * sy + ty
  return np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], 1)


def clip_to(boxes, width, height):
  """Boxes [N, 4] clipped to the [0, width] x [0, height] image (width, height: numbers or one per box)."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  return np.stack([np.clip(boxes[:, 0], 0, width), np.clip(boxes[:, 1], 0, height),
                   np.clip(boxes[:, 2], 0, width), np.clip(boxes[:, 3], 0, height)], 1)


def clip(boxes, height, width, min_visible=MIN_VISIBLE):
  """(boxes clipped to the [0, width] x [0, height] image, keep: bool [N]). A box is dropped when
  nothing of it is left or less than `min_visible` of its area is."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  out = clip_to(boxes, width, height)
  w, h = out[:, 2] - out[:, 0], out[:, 3] - out[:, 1]
  keep = (w > 0) & (h > 0) & (w * h >= min_visible * np.maximum(area, 1e-12))
  return out, keep


def largest(boxes, limit):
  """Indices of the `limit` largest boxes by area, in their original order."""
  if len(boxes) <= limit:
    return np.arange(len(boxes))
  area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  return np.sort(np.argsort(-area, kind="stable")[:limit])


def pad(boxes, classes, max_boxes):
  """{"boxes": float32 [M, 4], "classes": int32 [M], "box_mask": bool [M]}: the boxes first, zeros after;
  more than M boxes keep the M largest."""
  keep = largest(np.asarray(boxes).reshape(-1, 4), max_boxes)
  n = len(keep)
  out = {"boxes": np.zeros((max_boxes, 4), np.float32), "classes": np.zeros(max_boxes, np.int32),
         "box_mask": np.zeros(max_boxes, bool)}
  out["boxes"][:n] = np.asarray(boxes).reshape(-1, 4)[keep]
  out["classes"][:n] = np.asarray(classes)[keep]
  out["box_mask"][:n] = True
  return out


def targets(boxes, classes, affine, height, width, max_boxes):
  """Source boxes and classes -> the padded targets of an output image of (height, width)."""
  moved, keep = clip(apply_affine(boxes, affine), height, width)
  return pad(moved[keep], np.asarray(classes)[keep], max_boxes)


def to_source(boxes, to_source_map, width=None, height=None):
  """Boxes in the preprocessed image's pixels -> the source image's, by an example's "to_source" map (or
  preprocess.for_model_with_map's); clipped to a (width, height) source when given."""
  out = apply_affine(boxes, to_source_map)
  return out if width is None else clip_to(out, width, height)
