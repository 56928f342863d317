"""Box operations in jnp: format conversions, areas, pairwise IoU and GIoU, the elementwise GIoU loss,
clipping. Boxes are x0, y0, x1, y1 (corners, in pixels) unless a name says otherwise ("xywh" is COCO's
x, y, width, height; "cxcywh" is centre and size). All functions broadcast over leading axes.
"""
import jax.numpy as jnp

# Keeps IoU defined (0) for two empty boxes without changing any other value measurably.
EPS = 1e-9


def xyxy_to_xywh(b):
  return jnp.concatenate([b[..., :2], b[..., 2:] - b[..., :2]], axis=-1)


def xywh_to_xyxy(b):
  return jnp.concatenate([b[..., :2], b[..., :2] + b[..., 2:]], axis=-1)


def xyxy_to_cxcywh(b):
  return jnp.concatenate([(b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]], axis=-1)


def cxcywh_to_xyxy(b):
  return jnp.concatenate([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], axis=-1)


def area(b):
  """Area of each box; a box with x1 < x0 or y1 < y0 has area 0."""
  wh = jnp.maximum(b[..., 2:] - b[..., :2], 0)
  return wh[..., 0] * wh[..., 1]


def _inter_union(a, b):
  """Intersection and union of boxes `a` and `b` (broadcast against each other)."""
  lo = jnp.maximum(a[..., :2], b[..., :2])
  hi = jnp.minimum(a[..., 2:], b[..., 2:])
  inter = area(jnp.concatenate([lo, hi], axis=-1))
  return inter, area(a) + area(b) - inter


def iou(a, b):
  """Elementwise IoU of boxes a [..., 4] and b [..., 4]."""
  inter, union = _inter_union(a, b)
  return inter / jnp.maximum(union, EPS)


def giou(a, b):
  """Elementwise generalised IoU (Rezatofighi et al. 2019): IoU minus the share of the smallest enclosing
  box that the union leaves empty. In [-1, 1]; defined for disjoint boxes, so its loss has a gradient there."""
  inter, union = _inter_union(a, b)
  enclosing = area(jnp.concatenate([jnp.minimum(a[..., :2], b[..., :2]),
                                    jnp.maximum(a[..., 2:], b[..., 2:])], axis=-1))
  return inter / jnp.maximum(union, EPS) - (enclosing - union) / jnp.maximum(enclosing, EPS)


def pairwise_iou(a, b):
  """IoU of every box of a [..., N, 4] with every box of b [..., M, 4]: [..., N, M]."""
  return iou(a[..., :, None, :], b[..., None, :, :])


def pairwise_giou(a, b):
  """GIoU of every box of a [..., N, 4] with every box of b [..., M, 4]: [..., N, M]."""
  return giou(a[..., :, None, :], b[..., None, :, :])


def giou_loss(pred, target):
  """1 - GIoU, elementwise over matching boxes; 0 for a perfect box, up to 2."""
  return 1.0 - giou(pred, target)


def clip(b, height, width):
  """Boxes clipped to the image [0, width] x [0, height]."""
  hi = jnp.asarray([width, height, width, height], b.dtype)
  return jnp.clip(b, 0, hi)
