"""The detection report's figures: test images with ground-truth and predicted boxes, precision-recall curves,
per-class AP. matplotlib's object API, like imgrec/plots.py (whose `subplots` and `show_image` it reuses)."""
import numpy as np
from matplotlib.patches import Rectangle

from imgrec import plots


def _iou(a, b):
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
  return w * h / union if union > 0 else 0.0


def plot_detections(images, truth, predictions, class_names, path, cols=4, min_score=0.3, overlap=0.6):
  """A grid of images: ground truth dashed green, predictions (score >= `min_score`) solid red, labelled with
  class and score. For legibility a prediction overlapping a better one shown (IoU > `overlap`, whatever its
  class) is left out of the drawing (NMS itself is per class); the title counts all of them. truth: (boxes [N, M, 4], classes [N, M], box_mask [N, M]); predictions: (boxes [N, K, 4],
  scores [N, K], classes [N, K], num_detections [N]); boxes x0, y0, x1, y1 in the images' pixels."""
  n = len(images)
  rows = max(1, -(-n // cols))
  fig, axes = plots.subplots(rows, cols, figsize=(3.2 * cols, 3.3 * rows + 0.5), squeeze=False)
  t_boxes, t_classes, t_mask = truth
  p_boxes, p_scores, p_classes, p_count = predictions
  for i, ax in enumerate(axes.flat):
    if i >= n:
      ax.axis("off")
      continue
    plots.show_image(ax, images[i])
    for b, c in zip(t_boxes[i][t_mask[i]], t_classes[i][t_mask[i]]):
      ax.add_patch(Rectangle(b[:2] - 0.5, b[2] - b[0], b[3] - b[1], fill=False, ec="lime", lw=1.2, ls="--"))
    shown, drawn = 0, []
    for b, s, c in zip(p_boxes[i][:p_count[i]], p_scores[i][:p_count[i]], p_classes[i][:p_count[i]]):
      if s < min_score:
        continue
      shown += 1
      if any(_iou(b, d) > overlap for d in drawn):
        continue
      drawn.append(b)
      ax.add_patch(Rectangle(b[:2] - 0.5, b[2] - b[0], b[3] - b[1], fill=False, ec="red", lw=1.2))
      ax.text(b[0] - 0.5, b[1] - 0.5, f"{class_names[int(c)]} {s:.2f}", color="white", fontsize=6, va="bottom",
              bbox={"facecolor": "red", "alpha": 0.7, "pad": 0.5, "lw": 0})
    ax.set_title(f"{int(t_mask[i].sum())} true, {shown} predicted ({len(drawn)} drawn)", fontsize=8)
  fig.suptitle(f"Detections (red, score >= {min_score}) and ground truth (dashed green)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def plot_pr_curves(curves, per_class, path):
  """Precision against recall (mean over classes) at IoU 0.5, 0.75 and averaged over 0.50:0.95; per-class AP."""
  fig, (ax1, ax2) = plots.subplots(1, 2, figsize=(11, 4.2))
  recall = np.asarray(curves["recall"])
  for key, label in (("AP50", "IoU 0.50"), ("AP75", "IoU 0.75"), ("AP", "IoU 0.50:0.95")):
    p = np.asarray(curves[key])
    ax1.plot(recall, p, label=f"{label} (AP {p.mean():.3f})")
  ax1.set(xlabel="recall", ylabel="precision", title="Precision-recall (mean over classes)", xlim=(0, 1),
          ylim=(0, 1.02))
  ax1.grid(alpha=0.3)
  ax1.legend()
  names = list(per_class)
  values = [max(per_class[k], 0.0) for k in names]
  ax2.barh(range(len(names)), values, color="tab:blue")
  ax2.set_yticks(range(len(names)), names, fontsize=7 if len(names) > 20 else 9)
  ax2.invert_yaxis()
  ax2.set(xlabel="AP (IoU 0.50:0.95)", title="Per-class AP", xlim=(0, 1))
  fig.tight_layout()
  fig.savefig(path, dpi=100)
