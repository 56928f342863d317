"""Every figure imgrec draws, as PNG files: training curves, evaluation reports, explanations, robustness,
augmentation previews. Shared by train, evaluate, explain, robustness and the data preview.

Figures are built with matplotlib's object API (`Figure`, no pyplot), so drawing changes no global
backend or state: a notebook that imports imgrec keeps its own matplotlib setup.
"""
import numpy as np
from matplotlib.figure import Figure


def subplots(*grid, figsize, **kwargs):
  """(figure, axes) like `pyplot.subplots`, without pyplot's global figure registry."""
  fig = Figure(figsize=figsize)
  return fig, fig.subplots(*grid, **kwargs)


def plot_curves(records, out_path, metric):
  """Loss and the task's `metric` against step: the train records and every evaluation (`metrics.jsonl` rows;
  a record without the metric, e.g. train records of a task that only evaluates it, is left out of its panel)."""
  train = [r for r in records if r["split"] == "train"]
  evals = [r for r in records if r["split"] != "train"]
  fig, (ax1, ax2) = subplots(1, 2, figsize=(10, 4))
  ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
  losses = [r for r in evals if "loss" in r]  # a task may evaluate no loss (detection: COCO mAP only)
  ax1.plot([r["step"] for r in losses], [r["loss"] for r in losses], "o-",
           label=losses[0]["split"] if losses else "eval")
  ax1.set(xlabel="step", ylabel="loss", title="Loss", yscale="log")
  train, evals = [r for r in train if metric in r], [r for r in evals if metric in r]
  ax2.plot([r["step"] for r in train], [r[metric] for r in train], label="train (batch)")
  ax2.plot([r["step"] for r in evals], [r[metric] for r in evals], "o-", label=evals[0]["split"] if evals else "eval")
  ax2.set(xlabel="step", ylabel=metric, title=metric.replace("_", " ").capitalize())
  for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)


def plot_confusion(confusion, class_names, path):
  """Row-normalised confusion matrix (each row sums to 1 = recall on the diagonal), counts in cells."""
  c = np.asarray(confusion)
  rows = c / np.maximum(c.sum(axis=1, keepdims=True), 1)
  k = len(class_names)
  size = max(5.0, 0.55 * k + 2)
  fig, ax = subplots(figsize=(size + 1, size))
  im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
  ax.set_xticks(range(k), class_names, rotation=45, ha="right")
  ax.set_yticks(range(k), class_names)
  ax.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix (counts; colour = row fraction)")
  if k <= 30:
    for i in range(k):
      for j in range(k):
        if c[i, j]:
          ax.text(j, i, str(c[i, j]), ha="center", va="center", fontsize=7,
                  color="white" if rows[i, j] > 0.5 else "black")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def show_image(ax, image):
  """uint8 HWC image on an axis: grayscale for one channel."""
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
  else:
    ax.imshow(image)
  ax.set_xticks([])
  ax.set_yticks([])


def plot_filters(kernel, layer, path, max_filters=64):
  """The first convolution's filters: one tile per output channel (RGB when 3 input channels)."""
  kh, kw, cin, cout = kernel.shape
  n = min(cout, max_filters)
  cols = min(8, n)
  rows = -(-n // cols)
  fig, axes = subplots(rows, cols, figsize=(1.3 * cols + 1.2, 1.3 * rows + 0.8), squeeze=False)
  lim = float(np.abs(kernel).max()) or 1.0
  im = None
  for i, ax in enumerate(axes.flat):
    ax.set_xticks([])
    ax.set_yticks([])
    if i >= n:
      ax.axis("off")
      continue
    k = kernel[..., i]
    if cin == 3:  # each filter scaled to [0, 1] to show its colour pattern
      ax.imshow((k - k.min()) / max(float(k.max() - k.min()), 1e-12))
    else:  # the mean over input channels on a shared signed scale
      im = ax.imshow(k.mean(-1), cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_title(str(i), fontsize=7)
  if im is not None:
    fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, label="weight")
  fig.suptitle(f"First convolution '{layer}': {n} of {cout} filters, {kh}x{kw}x{cin}")
  fig.savefig(path, dpi=110, bbox_inches="tight")


def plot_augment_grid(originals, draws, row_labels, title, path):
  """Rows of training images: the original (float [0, 1] HWC), then each augmented draw of it."""
  n, copies = len(originals), len(draws)
  fig, axes = subplots(n, copies + 1, figsize=(1.3 * (copies + 1), 1.3 * n), squeeze=False)
  for r in range(n):
    for c in range(copies + 1):
      im = np.asarray(originals[r] if c == 0 else draws[c - 1][r])
      ax = axes[r, c]
      ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray", vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title("original" if c == 0 else f"draw {c}", fontsize=8)
    axes[r, 0].set_ylabel(row_labels[r], fontsize=8)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def plot_side_by_side(rounds, panels, path, sides=("imgrec", "torchvision"), labels=None):
  """A benchmark's paired rounds as bars, one panel per figure: `rounds` [{side: {key: value}}], `panels`
  ((key, title), ...); `labels` names the rounds on the x axis (default "round 1", ...)."""
  fig, axes = subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
  for ax, (key, title) in zip(axes[0], panels):
    for j, side in enumerate(sides):
      values = [r[side][key] for r in rounds]
      ax.bar([i + 0.4 * j for i in range(len(values))], values, width=0.4, label=side)
    ax.set_xticks([i + 0.2 for i in range(len(rounds))], labels or [f"round {i + 1}" for i in range(len(rounds))],
                  fontsize=8)
    ax.set_title(title)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
