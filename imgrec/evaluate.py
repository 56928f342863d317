"""Evaluation of a trained workdir: metrics over a whole split and a report with plots.

  evaluate_workdir(W)  ->  W/report/{metrics.json, report.md, confusion.png, reliability.png,
                                     per_class.png, mistakes.png}

Batches stream through a jitted predict with the batch sharded over every device (as in
training); the logits come back replicated, so every process holds the whole split's
logits and the metrics (imgrec/metrics.py) are exact over the split.
"""
import json
import os

import jax
import numpy as np

from imgrec import metrics, parallel, plots, steps, workdir as wd


def logits_fn(model, mean, std, tta=False):
  """`fn(variables, batch) -> {"logits", "label"}` for `steps.stream`."""
  return lambda v, b: {"logits": steps.predict(model, v, b["image"], mean, std, tta), "label": b["label"]}


def evaluate_workdir(workdir, split=None, batch_size=None, tta=False, report=True, n_mistakes=24, overrides=()):
  """Metrics of the workdir's latest checkpoint on a split (default: the config's eval split).

  Returns the summary dict (split, accuracy, top5_accuracy, loss, ece, examples, step, ...);
  with `report`, also writes workdir/report/.
  """
  run = wd.restore(workdir, params_only=True, overrides=overrides)
  cfg, info = run.cfg, run.info
  split = split or cfg.data.eval_split
  mesh = parallel.make_mesh()
  batch_size = batch_size or cfg.batch_size
  parallel.check_batch(batch_size)
  data = wd.dataset(run).split(split)
  out = steps.stream(logits_fn(run.model, info["mean"], info["std"], tta), run.variables, data, batch_size, mesh,
                     cfg.data.prefetch, desc=f"eval {split}")
  logits, labels = out["logits"], out["label"]
  class_names = info["class_names"]
  full = metrics.summary(logits, labels, class_names)
  result = {"split": split, "step": int(run.state.step), "tta": bool(tta), **full}
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


def write_report(out, result, logits, labels, data, class_names, n_mistakes=24):
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump(result, f, indent=2)
  plots.plot_confusion(result["confusion"], class_names, os.path.join(out, "confusion.png"))
  plots.plot_reliability(result["reliability"], result["ece"], os.path.join(out, "reliability.png"))
  plots.plot_per_class(result["per_class"], os.path.join(out, "per_class.png"))
  probs = metrics.softmax(np.asarray(logits, np.float64))
  preds = probs.argmax(-1)
  wrong = np.flatnonzero(preds != labels)
  worst = wrong[np.argsort(-probs[wrong, preds[wrong]], kind="stable")][:n_mistakes]
  images, _ = data.get(np.sort(worst)) if len(worst) else (np.zeros((0, 1, 1, 1), np.uint8), None)
  order = np.argsort(np.argsort(worst))  # `get` took sorted indices; put them back in confidence order
  images = images[order] if len(worst) else images
  plots.plot_mistakes(images, labels[worst], preds[worst], probs[worst, preds[worst]], class_names,
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
