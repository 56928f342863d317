"""Evaluation of a trained workdir: metrics over a whole split and a report with plots.

  evaluate_workdir(W)  ->  W/report/{metrics.json, report.md, confusion.png, reliability.png,
                                     per_class.png, mistakes.png}

Batches stream through a jitted predict with the batch sharded over every device (as in
training); the logits come back replicated, so every process holds the whole split's
logits and the metrics (imgrec/metrics.py) are exact over the split.
"""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from imgrec import metrics, parallel, train
from imgrec.data import pipeline, sources


def make_predict(model, mean, std, tta=False):
  """(state, uint8 images) -> logits. With `tta`, the log of the mean softmax over the image and its mirror."""
  def logits_of(state, images):
    return model.apply(train.variables(state), train.normalize(images, mean, std), train=False)

  def predict(state, images):
    if not tta:
      return logits_of(state, images)
    probs = jax.nn.softmax(logits_of(state, images)) + jax.nn.softmax(logits_of(state, images[:, :, ::-1]))
    return jnp.log(probs / 2)
  return predict


@functools.lru_cache(maxsize=16)
def _jitted(predict, replicated, with_labels):
  """One compiled step per predict function (robustness runs the same one over many corruptions)."""
  args = (lambda b: (b["image"], b["label"])) if with_labels else (lambda b: (b["image"],))
  return jax.jit(lambda s, b: (predict(s, *args(b)), b["label"], b["mask"]), out_shardings=replicated)


def predict_split(predict, state, split, batch_size, mesh, prefetch=2, transform=None, desc="eval",
                  with_labels=False):
  """Logits and labels (host numpy) of every example of `split`, in order.

  `predict(state, images)` -> logits, or `predict(state, images, labels)` with `with_labels` (attacks).
  `transform(images, batch_index) -> images` alters each process-local uint8 batch on the host
  first (corruptions; pipeline.eval_batches runs it on its background thread, overlapping the device work).
  """
  sharding = parallel.batch_sharding(mesh)
  step = _jitted(predict, parallel.replicated(mesh), with_labels)
  outs = []
  n_batches = -(-len(split) // batch_size)
  for batch in tqdm.tqdm(pipeline.eval_batches(split, batch_size, sharding, prefetch, transform=transform),
                         total=n_batches, desc=desc, unit="batch",
                         leave=False, disable=jax.process_index() != 0):
    outs.append(step(state, batch))
  logits, labels, mask = (np.concatenate(x) for x in zip(*jax.device_get(outs)))
  return logits[mask], labels[mask]


def evaluate_workdir(workdir, split=None, batch_size=None, tta=False, report=True, n_mistakes=24):
  """Metrics of the workdir's latest checkpoint on a split (default: the config's eval split).

  Returns the summary dict (split, accuracy, top5_accuracy, loss, ece, examples, step, ...);
  with `report`, also writes workdir/report/.
  """
  cfg, info, model, state = train.restore(workdir)
  split = split or cfg.data.eval_split
  mesh = parallel.make_mesh()
  batch_size = batch_size or cfg.batch_size
  parallel.check_batch(batch_size)
  ds = sources.load(cfg.data)
  data = ds.split(split)
  predict = make_predict(model, info["mean"], info["std"], tta=tta)
  logits, labels = predict_split(predict, state, data, batch_size, mesh, cfg.data.prefetch, desc=f"eval {split}")
  class_names = info["class_names"]
  full = metrics.summary(logits, labels, class_names)
  result = {"split": split, "step": int(state.step), "tta": bool(tta), **full}
  if report and jax.process_index() == 0:
    out = os.path.join(workdir, "report")
    write_report(out, result, logits, labels, data, class_names, n_mistakes)
    result["report"] = out
  return result


def headline(result):
  """The short JSON summary the CLI prints (`imgrec eval --json`)."""
  keys = ("split", "accuracy", "loss", "examples", "top5_accuracy", "ece", "step", "tta")
  return {**{k: result[k] for k in keys}, "macro_f1": result["macro"]["f1"], "weighted_f1": result["weighted"]["f1"]}


# ---------------------------------------------------------------------------- report


def _plt():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot_confusion(confusion, class_names, path):
  """Row-normalised confusion matrix (each row sums to 1 = recall on the diagonal), counts in cells."""
  plt = _plt()
  c = np.asarray(confusion)
  rows = c / np.maximum(c.sum(axis=1, keepdims=True), 1)
  k = len(class_names)
  size = max(5.0, 0.55 * k + 2)
  fig, ax = plt.subplots(figsize=(size + 1, size))
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
  plt.close(fig)


def plot_reliability(rel, ece, path):
  plt = _plt()
  n = rel["bins"]
  edges = np.linspace(0, 1, n + 1)
  centers = (edges[:-1] + edges[1:]) / 2
  count = np.asarray(rel["count"])
  acc = np.where(count > 0, rel["accuracy"], np.nan)
  fig, (ax, ax2) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
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
  plt.close(fig)


def plot_per_class(per_class, path):
  plt = _plt()
  k = len(per_class)
  y = np.arange(k)
  fig, ax = plt.subplots(figsize=(7, max(3.0, 0.45 * k + 1.5)))
  for off, key, color in ((-0.27, "precision", "tab:blue"), (0, "recall", "tab:orange"), (0.27, "f1", "tab:green")):
    ax.barh(y + off, [c[key] for c in per_class], height=0.27, label=key, color=color)
  ax.set_yticks(y, [f"{c['class']} (n={c['support']})" for c in per_class])
  ax.invert_yaxis()
  ax.set(xlim=(0, 1.0), xlabel="score", title="Per-class precision / recall / F1 (n = support)")
  ax.legend(loc="lower left", bbox_to_anchor=(0, 1.06), ncol=3, frameon=False)
  ax.grid(axis="x", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


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
  plt = _plt()
  n = len(images)
  rows = max(1, -(-n // cols))
  fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.4 * rows + 0.6), squeeze=False)
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
  plt.close(fig)


def write_report(out, result, logits, labels, data, class_names, n_mistakes=24):
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump(result, f, indent=2)
  plot_confusion(result["confusion"], class_names, os.path.join(out, "confusion.png"))
  plot_reliability(result["reliability"], result["ece"], os.path.join(out, "reliability.png"))
  plot_per_class(result["per_class"], os.path.join(out, "per_class.png"))
  probs = metrics.softmax(np.asarray(logits, np.float64))
  preds = probs.argmax(-1)
  wrong = np.flatnonzero(preds != labels)
  worst = wrong[np.argsort(-probs[wrong, preds[wrong]], kind="stable")][:n_mistakes]
  images, _ = data.get(np.sort(worst)) if len(worst) else (np.zeros((0, 1, 1, 1), np.uint8), None)
  order = np.argsort(np.argsort(worst))  # `get` took sorted indices; put them back in confidence order
  images = images[order] if len(worst) else images
  plot_mistakes(images, labels[worst], preds[worst], probs[worst, preds[worst]], class_names,
                os.path.join(out, "mistakes.png"))
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(report_markdown(result))


def report_markdown(r):
  lines = [f"# Evaluation report: split `{r['split']}`, checkpoint step {r['step']}", "",
           f"{r['examples']} examples" + (", test-time augmentation: horizontal-flip averaging" if r["tta"] else ""), "",
           "| metric | value |", "|---|---|",
           f"| top-1 accuracy | {r['accuracy']:.4f} |", f"| top-5 accuracy | {r['top5_accuracy']:.4f} |",
           f"| loss (NLL) | {r['loss']:.4f} |", f"| ECE ({r['reliability']['bins']} bins) | {r['ece']:.4f} |"]
  for avg in ("macro", "weighted"):
    a = r[avg]
    lines.append(f"| {avg} precision / recall / F1 | {a['precision']:.4f} / {a['recall']:.4f} / {a['f1']:.4f} |")
  lines += ["", "## Per class", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
  lines += [f"| {c['class']} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
            for c in r["per_class"]]
  lines += ["", "![per-class scores](per_class.png)", "", "## Confusion matrix", "", "![confusion](confusion.png)", "",
            "## Calibration", "", "![reliability](reliability.png)", "", "## Most confident mistakes", "",
            "![mistakes](mistakes.png)", ""]
  return "\n".join(lines)
