"""The FCOS objective, inside jit: target assignment from the padded ground truth, sigmoid focal loss on the
classes, GIoU (plus optional L1 on stride-normalised distances) on the boxes of positive points, and BCE on
centerness.

Assignment (per image, over all points and boxes at once): a point is a candidate for a box when it lies
inside the box, within `center_radius` strides of the box's centre (centre sampling), and the largest of its
ltrb distances to the box falls in its level's size range (4..8 strides; the first level from 0, the last
to infinity). Padding boxes are never candidates. Among candidates the smallest box wins.
"""
import jax
import jax.numpy as jnp

from imgrec.tasks.detection import boxes as box_ops

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def assign(points, boxes, classes, box_mask, center_radius=1.5):
  """One image: points [P, 3] (x, y, stride), boxes [M, 4], classes [M], box_mask [M] ->
  (positive [P] bool, class [P] int32, ltrb target [P, 4]; class and ltrb are only meaningful where positive)."""
  px, py, s = points[:, 0:1], points[:, 1:2], points[:, 2:3]
  ltrb = jnp.stack([px - boxes[:, 0], py - boxes[:, 1], boxes[:, 2] - px, boxes[:, 3] - py], -1)  # [P, M, 4]
  inside = ltrb.min(-1) > 0
  centre = (boxes[:, :2] + boxes[:, 2:]) / 2
  radius = center_radius * s
  near = (jnp.abs(px - centre[:, 0]) < radius) & (jnp.abs(py - centre[:, 1]) < radius)
  reach = ltrb.max(-1)
  lo = jnp.where(s == points[:, 2].min(), 0.0, 4 * s)
  hi = jnp.where(s == points[:, 2].max(), jnp.inf, 8 * s)
  candidate = inside & near & (reach > lo) & (reach <= hi) & box_mask[None, :]
  area = jnp.where(candidate, box_ops.area(boxes)[None, :], jnp.inf)
  best = jnp.argmin(area, axis=1)
  positive = candidate.any(1)
  return positive, classes[best].astype(jnp.int32), jnp.take_along_axis(ltrb, best[:, None, None], 1)[:, 0]


def centerness_target(ltrb):
  """sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)); 1 at a box's centre, 0 at its edge."""
  lr, tb = ltrb[..., 0::2], ltrb[..., 1::2]
  return jnp.sqrt(lr.min(-1) / lr.max(-1) * tb.min(-1) / tb.max(-1))


def sigmoid_focal_loss(logits, targets, alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA):
  """Elementwise focal loss (Lin et al. 2017) of sigmoid `logits` against 0/1 `targets`."""
  p = jax.nn.sigmoid(logits)
  ce = targets * jax.nn.softplus(-logits) + (1 - targets) * jax.nn.softplus(logits)
  p_t = p * targets + (1 - p) * (1 - targets)
  return ce * (1 - p_t) ** gamma * (alpha * targets + (1 - alpha) * (1 - targets))


def fcos_loss(outputs, targets, cls_weight=1.0, box_weight=1.0, ctr_weight=1.0, l1_weight=0.0, center_radius=1.5):
  """outputs: model.FCOS's; targets: {"boxes" [N, M, 4], "classes" [N, M], "box_mask" [N, M]} ->
  (loss, {"loss_cls", "loss_box", "loss_ctr", "loss_l1", "positives"}). Sums over the whole batch are
  normalised by its positives (at least 1), so an image without boxes adds only its negatives."""
  logits, points = outputs["logits"], outputs["points"]
  positive, cls, ltrb_t = jax.vmap(lambda p, b, c, m: assign(p, b, c, m, center_radius))(
      points, targets["boxes"], targets["classes"], targets["box_mask"])
  pos = positive.astype(jnp.float32)
  num_pos = jnp.maximum(pos.sum(), 1.0)
  onehot = jax.nn.one_hot(cls, logits.shape[-1]) * pos[..., None]
  loss_cls = sigmoid_focal_loss(logits, onehot).sum() / num_pos
  ltrb_t = jnp.where(positive[..., None], ltrb_t, 1.0)  # negatives get a harmless box: no NaN in the gradient
  ctr_t = jnp.where(positive, centerness_target(ltrb_t), 0.0)
  xy = points[..., :2]
  as_box = lambda d: jnp.concatenate([xy - d[..., :2], xy + d[..., 2:]], -1)
  giou = box_ops.giou_loss(as_box(outputs["ltrb"]), as_box(ltrb_t))
  loss_box = (giou * ctr_t).sum() / jnp.maximum(ctr_t.sum(), 1e-6)  # centre points count more (FCOS practice)
  bce = jax.nn.softplus(-outputs["centerness"]) * ctr_t + jax.nn.softplus(outputs["centerness"]) * (1 - ctr_t)
  loss_ctr = (bce * pos).sum() / num_pos
  stride = points[..., 2:3]
  loss_l1 = (jnp.abs(outputs["ltrb"] - ltrb_t) / stride).sum(-1)
  loss_l1 = (loss_l1 * pos).sum() / (4 * num_pos)
  loss = cls_weight * loss_cls + box_weight * loss_box + ctr_weight * loss_ctr + l1_weight * loss_l1
  return loss, {"loss_cls": loss_cls, "loss_box": loss_box, "loss_ctr": loss_ctr, "loss_l1": loss_l1,
                "positives": pos.sum()}
