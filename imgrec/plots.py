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


def plot_curves(records, out_path, metric="accuracy"):
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


def show_image(ax, image):
  """uint8 HWC image on an axis: grayscale for one channel."""
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
  else:
    ax.imshow(image)
  ax.set_xticks([])
  ax.set_yticks([])


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


_TITLES = {"saliency": "gradient saliency |dy/dx|", "smoothgrad": "SmoothGrad |mean dy/dx|",
           "integrated_gradients": "integrated gradients", "gradcam": "Grad-CAM", "rollout": "attention rollout"}


def plot_explanation(image, maps, class_names, label, method, layer, path, top=5):
  """One row: the image, its top classes, then each attribution map over a gray copy of the image."""
  probs = np.exp(maps["logits"] - maps["logits"].max())
  probs /= probs.sum()
  order = np.argsort(-probs)[:top]
  keys = ["saliency", "smoothgrad", "integrated_gradients", method]
  fig, axes = subplots(1, 2 + len(keys), figsize=(3.1 * (2 + len(keys)), 3.6),
                           gridspec_kw={"width_ratios": [1, 1.3] + [1] * len(keys)})
  show_image(axes[0], image)
  axes[0].set_title(("true: " + class_names[label] + "\n" if label is not None else "") +
                    f"pred: {class_names[order[0]]}", fontsize=9)
  ax = axes[1]
  ax.barh(range(len(order)), probs[order], color=["tab:green" if c == label else "tab:blue" for c in order])
  for j, c in enumerate(order):
    ax.text(min(probs[c] + 0.02, 0.75), j, f"{probs[c]:.3f}", va="center", fontsize=7)
  ax.set_yticks(range(len(order)), [class_names[c] for c in order], fontsize=8)
  ax.invert_yaxis()
  ax.set(xlim=(0, 1), xlabel="probability", title=f"top {len(order)} classes")
  ax.tick_params(axis="x", labelsize=7)
  gray = image.astype(np.float32).mean(-1)
  for ax, key in zip(axes[2:], keys):
    m = np.asarray(maps[key], np.float32)
    ax.imshow(gray, cmap="gray", vmin=0, vmax=255)
    if key == "integrated_gradients":  # signed: red adds to the class score, blue takes away
      lim = max(float(np.abs(m).max()), 1e-12)
      im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.7)
    else:
      im = ax.imshow(m / max(float(m.max()), 1e-12), cmap="jet" if key in ("gradcam", "rollout") else "inferno",
                     vmin=0, vmax=1, alpha=0.55)
    title = _TITLES[key] + (f"\nlayer {layer}" if key == "gradcam" and layer else "")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    cb = fig.colorbar(im, ax=ax, orientation="horizontal", fraction=0.05, pad=0.04)
    cb.ax.tick_params(labelsize=7)
    cb.set_label("attribution" if key == "integrated_gradients" else "relative importance", fontsize=7)
  fig.suptitle(f"Explanations for class '{class_names[order[0]]}' ({probs[order[0]]:.2f})", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


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


def plot_robustness(r, path):
  fig, (ax1, ax2) = subplots(1, 2, figsize=(12, 4.8))
  sev = [0] + r["severities"]
  for name, accs in r["corruptions"].items():
    ax1.plot(sev, [r["clean_accuracy"]] + accs, "o-", label=name)
  ax1.set(xlabel="severity (0 = clean)", ylabel="accuracy", ylim=(0, 1.02), xticks=sev,
          title=f"Corruptions (clean {r['clean_accuracy']:.3f}, mean {r['mean_corruption_accuracy']:.3f})")
  ax1.legend(fontsize=8, ncol=2, loc="lower left")
  eps = [0] + r["epsilons_255"]
  for attack, accs in r["adversarial"].items():
    ax2.plot(eps, [r["clean_accuracy"]] + accs, "o-", label=f"PGD-{r['pgd_steps']}" if attack == "pgd" else "FGSM")
  ax2.set(xlabel="L-inf budget eps (x 1/255)", ylabel="accuracy", ylim=(0, 1.02), xticks=eps,
          title="Adversarial accuracy")
  ax2.legend()
  for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
  fig.suptitle(f"Robustness on {r['split']} ({r['examples']} examples, step {r['step']})")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


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
