"""The image-text report's plot: example images with their top zero-shot labels."""
import numpy as np

from imgrec.plots import show_image, subplots


def plot_examples(images, labels, top, probabilities, class_names, path, cols=6):
  """Each image titled with its true class and its top labels with their probabilities (green: the top one is right)."""
  n = len(images)
  rows = max(1, -(-n // cols))
  fig, axes = subplots(rows, cols, figsize=(2.2 * cols, 2.9 * rows), squeeze=False)
  for i, ax in enumerate(axes.flat):
    if i >= n:
      ax.axis("off")
      continue
    show_image(ax, np.asarray(images[i]))
    true = class_names[labels[i]] if labels[i] >= 0 else "?"
    lines = [f"{class_names[c]} {p:.2f}" for c, p in zip(top[i], probabilities[i])]
    ax.set_title(f"true: {true}\n" + "\n".join(lines), fontsize=7,
                 color="green" if len(top[i]) and top[i][0] == labels[i] else "red")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
