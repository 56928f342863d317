"""The segmentation report's figures: image / ground truth / prediction overlays, per-class IoU, the confusion
matrix. matplotlib's object API, like imgrec/plots.py (whose `subplots` and `show_image` it reuses)."""
import numpy as np

from imgrec import plots
from imgrec.tasks.segmentation import synthetic


def plot_overlays(images, truths, preds, class_names, path):
  """One row per image: the image, its ground truth and the prediction overlaid in class colours (background,
  class 0, left clear; ignored pixels white), each titled with the classes present. Label maps are at the
  images' size."""
  n = len(images)
  fig, axes = plots.subplots(max(1, n), 3, figsize=(7.5, 2.5 * max(1, n) + 0.4), squeeze=False)
  names = lambda m: ", ".join(class_names[c] for c in np.unique(m) if 0 < c < len(class_names))[:40]
  for i in range(n):
    for ax, (title, m) in zip(axes[i], (("image", None), ("truth", truths[i]), ("prediction", preds[i]))):
      plots.show_image(ax, images[i] if m is None else synthetic.overlay(images[i], m))
      ax.set_title(title if m is None else f"{title}: {names(m) or 'background'}", fontsize=7)
  if not n:
    axes[0, 0].set_title("no images")
  fig.suptitle("Ground truth and prediction (class colours; white: ignored)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def plot_class_iou(per_class, path):
  """Per-class IoU bars; classes absent from prediction and truth (NaN) marked n/a."""
  names = list(per_class)
  values = np.array([per_class[k] for k in names], float)
  fig, ax = plots.subplots(figsize=(6, 0.25 * len(names) + 1.2))
  ax.barh(range(len(names)), np.nan_to_num(values), color=[tuple(synthetic.colours(256)[i] / 255)
                                                             for i in range(len(names))], edgecolor="black", lw=0.3)
  for i, v in enumerate(values):
    ax.text(0.01 if np.isnan(v) else v + 0.01, i, "n/a" if np.isnan(v) else f"{v:.3f}", va="center", fontsize=7)
  ax.set_yticks(range(len(names)), names, fontsize=7 if len(names) > 20 else 9)
  ax.invert_yaxis()
  finite = values[np.isfinite(values)]
  ax.set(xlabel="IoU", xlim=(0, 1.1), title=f"Per-class IoU (mIoU {finite.mean() if finite.size else float('nan'):.3f})")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def plot_confusion(matrix, class_names, path):
  """The confusion matrix normalised per true class (rows), on a log colour scale's worth of detail."""
  m = np.asarray(matrix, np.float64)
  rows = m / np.maximum(m.sum(1, keepdims=True), 1)
  k = len(class_names)
  fig, ax = plots.subplots(figsize=(0.35 * k + 2.5, 0.35 * k + 2))
  im = ax.imshow(rows, cmap="viridis", vmin=0, vmax=1)
  ticks = range(k) if k <= 40 else range(0, k, max(1, k // 20))
  ax.set_xticks(list(ticks), [class_names[i] for i in ticks], rotation=90, fontsize=6)
  ax.set_yticks(list(ticks), [class_names[i] for i in ticks], fontsize=6)
  ax.set(xlabel="predicted", ylabel="true", title="Confusion (share of each true class's pixels)")
  fig.colorbar(im, ax=ax, fraction=0.046)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
