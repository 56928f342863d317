"""Classification's figures: the reliability diagram, per-class scores and the most confident mistakes (the
confusion matrix is shared: imgrec/plots.py)."""
import numpy as np

from imgrec.plots import show_image, subplots


def plot_reliability(rel, ece, path):
  n = rel["bins"]
  edges = np.linspace(0, 1, n + 1)
  centers = (edges[:-1] + edges[1:]) / 2
  count = np.asarray(rel["count"])
  acc = np.where(count > 0, rel["accuracy"], np.nan)
  fig, (ax, ax2) = subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
  ax.bar(centers, np.nan_to_num(acc), width=1 / n, edgecolor="black", alpha=0.8, label="accuracy in bin")
  ax.bar(centers, np.where(count > 0, np.asarray(rel["confidence"]) - np.nan_to_num(acc), 0),
         bottom=np.nan_to_num(acc), width=1 / n, color="red", alpha=0.3, edgecolor="red", label="gap to confidence")
  ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
  ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"Reliability diagram ({n} bins), ECE = {ece:.4f}")
  ax.legend(loc="upper left")
  ax.grid(alpha=0.3)
  ax2.bar(centers, count, width=1 / n, edgecolor="black", color="gray")
  ax2.set(xlabel="confidence (top-class probability)", ylabel="examples", yscale="log" if count.max() > 0 else "linear")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def plot_per_class(per_class, path):
  k = len(per_class)
  y = np.arange(k)
  fig, ax = subplots(figsize=(7, max(3.0, 0.45 * k + 1.5)))
  for off, key, color in ((-0.27, "precision", "tab:blue"), (0, "recall", "tab:orange"), (0.27, "f1", "tab:green")):
    ax.barh(y + off, [c[key] for c in per_class], height=0.27, label=key, color=color)
  ax.set_yticks(y, [f"{c['class']} (n={c['support']})" for c in per_class])
  ax.invert_yaxis()
  ax.set(xlim=(0, 1.0), xlabel="score", title="Per-class precision / recall / F1 (n = support)")
  ax.legend(loc="lower left", bbox_to_anchor=(0, 1.06), ncol=3, frameon=False)
  ax.grid(axis="x", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def plot_mistakes(images, true, pred, conf, class_names, path, cols=6):
  """A grid of misclassified images titled with their true and predicted classes."""
  n = len(images)
  rows = max(1, -(-n // cols))
  fig, axes = subplots(rows, cols, figsize=(2.1 * cols, 2.4 * rows + 0.6), squeeze=False)
  for i, ax in enumerate(axes.flat):
    if i >= n:
      ax.axis("off")
      continue
    show_image(ax, images[i])
    ax.set_title(f"true: {class_names[true[i]]}\npred: {class_names[pred[i]]} ({conf[i]:.2f})", fontsize=8,
                 color="darkred")
  fig.suptitle("Most confident mistakes (predicted class probability)" if n else "No mistakes")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
