"""Classification: one label per image. The task contract (imgrec/tasks/__init__.py), filled in.

Examples are {"image", "label"} (imgrec/data/splits.py, from imgrec/data/sources.py); the model maps images to
logits over `info["class_names"]`. Training: on-device augmentation on one-hot (smoothed) targets, cross-entropy
or the distillation objective (losses.py), "accuracy" as the train metric. Evaluation: the logits of a whole split
(with classification.tta, averaged over horizontal mirrors), then metrics.py (accuracy, top-5, NLL, ECE, per
class, confusion). Serving: logits, softmax probabilities and top-k classes. Distillation and TTA are this task's.
"""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from imgrec import models, steps
from imgrec.data import augment, sources
from imgrec.plots import plot_confusion
from imgrec.tasks.classification import losses, metrics, plots
from imgrec.tasks.classification.settings import (DECODED_SOURCES, DEFAULT_SELECT, MAY_CHANGE, NAME,  # noqa: F401
                                                  SELECT, settings, validate)
from imgrec.tasks.contract import Output

RECORD = ("accuracy", "loss", "examples", "top5_accuracy", "ece")  # what metrics.jsonl keeps of an evaluation
LINE = ("accuracy", "loss")  # what the trainer's and `imgrec eval`'s lines show of it
OUTPUTS = (Output("logits", "FP32", ("K",), tfs=False), Output("probabilities", "FP32", ("K",)))  # K: classes
UPLOAD_K = 5  # classes an upload answers with when the query names no k


# ---------------------------------------------------------------------------- data and model

def open_data(cfg):
  """The data set named by the config's `data` section, with its "val" split carved out of the training split
  when data.val_fraction > 0."""
  data_cfg = cfg.data
  ds = sources.load(data_cfg)
  if data_cfg.val_fraction > 0:
    ds = sources.with_validation(ds, data_cfg.train_split, data_cfg.val_fraction)
  return ds


def create_model(cfg, info):
  """The zoo model `cfg.model.name`, with one logit per class of `info` (dataset.json)."""
  return models.create(cfg.model.name, len(info["class_names"]), dtype=jnp.dtype(cfg.model.dtype),
                       **cfg.model.kwargs.to_dict())


# ---------------------------------------------------------------------------- training (inside the jitted step)

def make_inputs(cfg, info):
  """`fn(rng, batch) -> (augmented float images in [0, 1], {"soft": smoothed one-hot [N, K], "label": [N]})`."""
  ops = augment.parse(cfg.data.augment)
  num_classes, smoothing = len(info["class_names"]), cfg.optim.label_smoothing

  def inputs(rng, batch):
    x, soft = augment.apply(ops, rng, steps.to_float(batch["image"]), jax.nn.one_hot(batch["label"], num_classes))
    return x, {"soft": soft * (1.0 - smoothing) + smoothing / num_classes, "label": batch["label"]}
  return inputs


def make_loss(cfg, info, open_run):
  """(`fn(logits, targets, x, teacher variables) -> (loss, {"accuracy"})`, aux): cross-entropy against the soft
  targets; with distill.teacher, the distillation objective, the teacher's variables being `aux` (an argument of
  the compiled step, restored once here through `open_run`)."""
  if not cfg.distill.teacher:
    return loss_of(), None
  teacher = open_run(cfg.distill.teacher)
  objective = losses.distillation(teacher.model, teacher.info, info, cfg.distill.alpha, cfg.distill.temperature)
  return loss_of(objective), teacher.variables


def loss_of(objective=None):
  """The loss fn around `objective(logits, soft targets, x, teacher variables) -> scalar` (None: cross-entropy);
  "accuracy" is computed once, from the logits the loss saw."""
  objective = objective or (lambda logits, soft, x, teacher: losses.soft_cross_entropy(logits, soft))

  def loss(logits, targets, x, teacher):
    accuracy = jnp.mean(jnp.argmax(logits, -1) == targets["label"])
    return objective(logits, targets["soft"], x, teacher), {"accuracy": accuracy}
  return loss


def make_train_step(model, tx, info, cfg, objective=None):
  """`steps.make_train_step` over this task's inputs and loss (`objective`: see `loss_of`), for callers that
  build a step by hand (tests, benchmarks, pruning)."""
  return steps.make_train_step(model, tx, info["mean"], info["std"], make_inputs(cfg, info), loss_of(objective), cfg)


# ---------------------------------------------------------------------------- evaluation

def predict(model, variables, images, mean, std, tta=False):
  """uint8 NHWC images -> float32 logits in eval mode. With `tta`, the log of the mean softmax over each image
  and its horizontal mirror."""
  logits = lambda im: steps.apply(model, variables, im, mean, std).astype(jnp.float32)
  if not tta:
    return logits(images)
  probs = jax.nn.softmax(logits(images)) + jax.nn.softmax(logits(images[:, :, ::-1]))
  return jnp.log(probs / 2)


def make_eval_fn(model, info, cfg):
  """`fn(variables, batch) -> {"logits", "label"}` per example, for `steps.stream` (classification.tta: flip
  averaging)."""
  mean, std, tta = info["mean"], info["std"], cfg.classification.tta
  return lambda v, b: {"logits": predict(model, v, b["image"], mean, std, tta), "label": b["label"]}


def evaluate(outputs, split, info, cfg):
  """(the record metrics.jsonl keeps, the full `metrics.summary`) of a split's streamed outputs."""
  del split
  summary = {**metrics.summary(outputs["logits"], outputs["label"], info["class_names"]),
             "tta": bool(cfg.classification.tta)}
  return {k: summary[k] for k in RECORD}, summary


def augment_preview(cfg, ds):
  """TensorBoard's augmented training examples: (plot function, its arguments but the file). `ds`: the data set
  the trainer has open, so a big folder is not scanned a second time."""
  return functools.partial(augment.preview, ds=ds), cfg


def summary_images(result, summary):
  """The final evaluation's images for TensorBoard: {tag: (plot function, its arguments but the file)}."""
  names = [c["class"] for c in summary["per_class"]]
  return {f"{result['split']}/confusion_matrix": (plot_confusion, summary["confusion"], names),
          f"{result['split']}/reliability": (plots.plot_reliability, summary["reliability"], summary["ece"])}


def headline(result):
  """The short JSON summary of an evaluation (`imgrec eval --json`)."""
  keys = ("split", "accuracy", "loss", "examples", "top5_accuracy", "ece", "step", "tta")
  return {**{k: result[k] for k in keys}, "macro_f1": result["macro"]["f1"], "weighted_f1": result["weighted"]["f1"]}


# ---------------------------------------------------------------------------- prediction and serving

def make_predict(model, mean, std, normalized=False):
  """`fn(variables, images) -> {"logits", "probabilities"}` float32 [B, K] (pure; the server compiles it per padded
  batch size): uint8 images, or with `normalized` already-standardised float32 ones."""
  def predict_fn(variables, images):
    logits = (model.apply(variables, images, train=False).astype(jnp.float32) if normalized
              else predict(model, variables, images, mean, std))
    return {"logits": logits, "probabilities": jax.nn.softmax(logits, -1)}
  return predict_fn


def output_sizes(model, info):
  """K, the number of classes."""
  del model
  return {"K": len(info["class_names"])}


def top_k(scores, k):
  """The indices of the k highest scores of each row, highest first (ties: lower index first)."""
  return np.argsort(-scores, axis=-1, kind="stable")[..., :k]


def classification_strings(values, k, class_names):
  """Triton's classification extension: per row the top-k "score:index:label" strings of `values`."""
  return [[f"{values[i, j]:f}:{j}:{class_names[j]}" for j in row] for i, row in enumerate(top_k(values, k))]


def upload_result(outputs, input_hw, to_source, source_wh, class_names, k=None):
  """An uploaded image's JSON: {"predictions": [{"label", "index", "probability"}]}, the k (default UPLOAD_K)
  most probable classes, best first. The geometry is the detection task's concern, not this one's."""
  del input_hw, to_source, source_wh
  probs = outputs["probabilities"]
  k = max(1, min(k or UPLOAD_K, len(class_names)))
  return {"predictions": [{"label": class_names[j], "index": int(j), "probability": float(probs[j])}
                          for j in top_k(probs, k)]}


HF_PARAMETERS = {"top_k": "k"}  # Hugging Face's image-classification JSON: its parameters here


def hf_result(result):
  """An upload's answer as Hugging Face's image-classification (and zero-shot) pipelines give it: [{"label",
  "score"}], best first."""
  return [{"label": p["label"], "score": p["probability"]} for p in result["predictions"]]


# ---------------------------------------------------------------------------- report

def write_report(out, outputs, split, info, summary, n_mistakes=24):
  """out/{metrics.json (`summary`), report.md, confusion.png, reliability.png, per_class.png, mistakes.png}."""
  logits, labels, class_names, result = outputs["logits"], outputs["label"], info["class_names"], summary
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump(result, f, indent=2)
  plot_confusion(result["confusion"], class_names, os.path.join(out, "confusion.png"))
  plots.plot_reliability(result["reliability"], result["ece"], os.path.join(out, "reliability.png"))
  plots.plot_per_class(result["per_class"], os.path.join(out, "per_class.png"))
  probs = metrics.softmax(np.asarray(logits, np.float64))
  preds = probs.argmax(-1)
  wrong = np.flatnonzero(preds != labels)
  worst = wrong[np.argsort(-probs[wrong, preds[wrong]], kind="stable")][:n_mistakes]
  images, _ = split.get(np.sort(worst)) if len(worst) else (np.zeros((0, 1, 1, 1), np.uint8), None)
  order = np.argsort(np.argsort(worst))  # `get` took sorted indices; put them back in confidence order
  images = images[order] if len(worst) else images
  plots.plot_mistakes(images, labels[worst], preds[worst], probs[worst, preds[worst]], class_names,
                      os.path.join(out, "mistakes.png"))
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(report_markdown(result))


def report_markdown(r):
  lines = [f"# Evaluation report: split `{r['split']}`, checkpoint step {r['step']}", "",
           f"{r['examples']} examples" + (", test-time augmentation: horizontal-flip averaging" if r["tta"] else ""),
           "",
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
