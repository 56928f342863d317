"""FCOS targets and loss: assignment on a hand-made case (each rule decides one point), focal loss values, and a
loss that falls to its floor for predictions equal to the targets."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imgrec.tasks.detection import loss

# (x, y, stride). Levels: stride 8 takes reach (0, 64], stride 16 (the last) (64, inf).
POINTS = np.float32([[10, 10, 8], [20, 10, 8], [50, 50, 8], [34, 26, 8], [10, 10, 16], [56, 56, 16]])
BOXES = np.float32([[0, 0, 40, 30],      # C, class 0, area 1200
                    [0, 0, 30, 20],      # A, class 1, area 600
                    [0, 0, 90, 90],      # padding (mask False): it would win point 2
                    [5, 5, 125, 125],    # B, class 2, area 14400
                    [0, 0, 0, 0]])
CLASSES = np.int32([0, 1, 0, 2, 0])
MASK = np.bool_([True, True, False, True, False])
assign = jax.jit(loss.assign)


def test_assignment_by_hand():
  positive, cls, ltrb = assign(POINTS, BOXES, CLASSES, MASK)
  # 0, 1: inside A and C, A smaller -> A.  2: only the padding box would take it.  3: inside C but 14 px from
  # its centre (radius 1.5 * 8 = 12).  4: inside B at the right level but 55 px from its centre (radius 24).
  # 5: B at stride 16 (reach 69 > 64); B's reach from stride-8 points is too large for that level.
  np.testing.assert_array_equal(positive, [True, True, False, False, False, True])
  np.testing.assert_array_equal(np.asarray(cls)[[0, 1, 5]], [1, 1, 2])
  np.testing.assert_allclose(np.asarray(ltrb)[[0, 1, 5]], [[10, 10, 20, 10], [20, 10, 10, 10], [51, 51, 69, 69]])


def test_focal_loss_values():
  x = np.float32([2.0, -1.0])
  p = 1 / (1 + np.exp(-x))
  got = loss.sigmoid_focal_loss(x, np.float32([1.0, 0.0]))
  expected = [-0.25 * (1 - p[0]) ** 2 * np.log(p[0]), -0.75 * p[1] ** 2 * np.log(1 - p[1])]
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_loss_is_lowest_for_the_targets_and_finite_without_boxes():
  n, p, c = 2, len(POINTS), 3
  targets = {"boxes": np.stack([BOXES, np.zeros_like(BOXES)]), "classes": np.stack([CLASSES, CLASSES]),
             "box_mask": np.stack([MASK, np.zeros_like(MASK)])}  # image 2 has no boxes
  points = np.broadcast_to(POINTS, (n, p, 3))
  positive, cls, ltrb_t = map(np.asarray, assign(POINTS, BOXES, CLASSES, MASK))
  good_logits = np.full((n, p, c), -12.0, np.float32)
  good_logits[0, np.flatnonzero(positive), cls[positive]] = 12.0
  lr, tb = np.sort(ltrb_t[:, 0::2], 1), np.sort(ltrb_t[:, 1::2], 1)  # the centerness target, in numpy
  ctr = np.where(positive, np.sqrt(lr[:, 0] / lr[:, 1] * tb[:, 0] / tb[:, 1]), 0.0)
  ctr_logit = np.log(np.clip(ctr, 1e-6, 1 - 1e-6) / np.clip(1 - ctr, 1e-6, 1))
  good = {"logits": good_logits, "ltrb": np.stack([np.where(positive[:, None], ltrb_t, 1.0)] * 2),
          "centerness": np.stack([ctr_logit, ctr_logit]).astype(np.float32), "points": points}
  rng = np.random.default_rng(0)
  bad = {"logits": rng.normal(size=(n, p, c)).astype(np.float32),
         "ltrb": rng.uniform(1, 40, (n, p, 4)).astype(np.float32),
         "centerness": rng.normal(size=(n, p)).astype(np.float32), "points": points}
  fn = jax.jit(jax.value_and_grad(lambda o, t: loss.fcos_loss(o, t, l1_weight=1.0), has_aux=True))
  (good_loss, m), _ = fn(good, targets)
  (bad_loss, m_bad), grads = fn(bad, targets)
  assert m["positives"] == 3
  assert float(m["loss_box"]) == pytest.approx(0, abs=1e-5) and float(m["loss_l1"]) == pytest.approx(0, abs=1e-5)
  assert float(m["loss_cls"]) < 1e-4
  assert m_bad["loss_box"] > 0.1 and m_bad["loss_cls"] > 1 and bad_loss > good_loss + 1
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  empty = {k: np.zeros_like(v) for k, v in targets.items()}
  (_, m_empty), _ = fn(bad, empty)
  assert m_empty["positives"] == 0 and np.isfinite(m_empty["loss_cls"]) and float(m_empty["loss_box"]) == 0
