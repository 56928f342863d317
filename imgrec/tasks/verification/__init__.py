"""Verification: is this the same identity? An embedding learnt with a margin loss, judged on pairs of identities
never trained on, and searched 1:N in a gallery. The task contract (imgrec/tasks/__init__.py), filled in.

Training examples are {"image", "label"} over the training identities (data.py); the model (margins.Embedder) is
any zoo backbone's pooled features -> the embedding head (BN, dropout, linear, BN) -> cosines to one weight
vector per training identity, trained with ArcFace / CosFace / the combined margin or plain softmax
(config.verification). Evaluation embeds every image of the pairs (with its mirror, config.verification.flip) and
runs the pairs protocol (protocol.py): 10-fold accuracy, TAR at FAR 1e-3 / 1e-4, EER, and the threshold for
verification.calibrate_far, which the record keeps (metrics.jsonl) and serving answers with.

Served output: "embeddings" float32 [B, D], L2-normalised (D = verification.embedding_dim); a pair's score is the
dot product of its two embeddings. Its own routes (serving.py): POST :verify (two images -> score, same, threshold)
and a 1:N gallery (enroll, search, list, delete) persisted beside the run.
"""
import json
import os

import jax.numpy as jnp
import numpy as np

from imgrec import models, steps
from imgrec.data import augment
from imgrec.tasks.contract import Output
from imgrec.tasks.verification import data, margins, pairs as pairs_lib, plots, protocol, serving
from imgrec.tasks.verification.settings import (DECODED_SOURCES, DEFAULT_SELECT, MAY_CHANGE, NAME, SELECT,
                                                settings, validate)

__all__ = ("DECODED_SOURCES", "DEFAULT_SELECT", "MAY_CHANGE", "NAME", "SELECT", "settings", "validate")

RECORD = ("accuracy", "accuracy_std", "tar_far1e3", "tar_far1e4", "eer", "threshold", "threshold_far", "pairs")
LINE = ("accuracy", "tar_far1e3", "eer")  # what the trainer's progress line shows
OUTPUTS = (Output("embeddings", "FP32", ("D",)),)  # served; "D": verification.embedding_dim


# ---------------------------------------------------------------------------- data and model

def open_data(cfg):
  """The training identities and the held-out pairs of cfg.data and cfg.verification (data.py)."""
  return data.open_data(cfg.data, cfg.verification)


def create_model(cfg, info):
  """margins.Embedder on the zoo backbone cfg.model.name (its own head skipped), one weight vector per training
  identity of `info`."""
  v = cfg.verification
  backbone = models.create(cfg.model.name, 1, dtype=jnp.dtype(cfg.model.dtype), **cfg.model.kwargs.to_dict())
  return margins.Embedder(backbone, v.embedding_dim, len(info["class_names"]), v.dropout,
                          normalized_classes=v.loss != "softmax", dtype=jnp.dtype(cfg.model.dtype), flip=v.flip)


def output_sizes(model, info=None):
  del info
  return {"D": model.dim}


# ---------------------------------------------------------------------------- training (inside the jitted step)

def make_inputs(cfg, info):
  """`fn(rng, batch) -> (augmented float images in [0, 1], {"label"})`; ops that mix images (mixup, cutmix) are
  refused: a mixed image has no one identity for the margin."""
  del info
  ops = augment.unmixed(cfg.data.augment, "the margin losses need one identity per image")

  def inputs(rng, batch):
    return augment.apply_images(ops, rng, steps.to_float(batch["image"])), {"label": batch["label"]}
  return inputs


def make_loss(cfg, info, open_run):
  """(`fn(outputs, targets, x, aux) -> (loss, {"identity_accuracy"})`, None): the configured margin loss over the
  training identities (identity_accuracy: argmax of the unmargined cosines, a training signal only)."""
  del info, open_run
  v = cfg.verification
  fn = margins.loss_fn(v.loss, v.scale, *margins.margins(v.loss, v.margin, v.m1, v.m2, v.m3))

  def loss(outputs, targets, x=None, aux=None):
    del x, aux
    value, accuracy = fn(outputs["logits"], targets["label"])
    return value, {"identity_accuracy": accuracy}
  return loss, None


# ---------------------------------------------------------------------------- evaluation

def _embed(model, variables, x):
  """L2-normalised embeddings of standardised images; with model.flip the mirror's embedding is added first."""
  e = lambda im: margins.l2_normalize(model.apply(variables, im, train=False)["embedding"])
  out = e(x) + e(x[:, :, ::-1]) if model.flip else e(x)
  return margins.l2_normalize(out)


def make_eval_fn(model, info, cfg):
  """`fn(variables, batch) -> {"embedding"}` per example (each image of the pairs once)."""
  del cfg
  return lambda v, b: {"embedding": _embed(model, v, steps.normalize(b["image"], info["mean"], info["std"]))}


def evaluate(outputs, split, info, cfg):
  """(record, summary) of the pairs of `split` (a data.PairSplit) scored with the streamed embeddings."""
  del info
  e = np.asarray(outputs["embedding"], np.float64)
  scores = protocol.pair_scores(e, split.first, split.second)
  summary = protocol.summary(scores, split.pairs.same, split.pairs.fold, cfg.verification.calibrate_far)
  summary.update(scores=scores.tolist(), same=split.pairs.same.tolist())
  return {k: summary[k] for k in RECORD}, summary


def summary_images(result, summary):
  """{TensorBoard tag: (plot function, its arguments but the file)}."""
  s, same = np.asarray(summary["scores"]), np.asarray(summary["same"], bool)
  return {f"{result['split']}/roc": (plots.plot_roc, s, same, summary),
          f"{result['split']}/scores": (plots.plot_histogram, s, same, summary)}


def augment_preview(cfg, ds):
  del cfg, ds
  return None


def headline(result):
  keys = ("split", "accuracy", "accuracy_std", "tar_far1e3", "tar_far1e4", "eer", "threshold", "threshold_far",
          "pairs", "step")
  return {k: result[k] for k in keys if k in result}


# ---------------------------------------------------------------------------- prediction and serving

def make_predict(model, mean, std, normalized=False):
  """`fn(variables, images) -> {"embeddings": L2-normalised float32 [B, D]}` (uint8 images, or with `normalized`
  standardised float32 ones)."""
  if normalized:
    return lambda variables, x: {"embeddings": _embed(model, variables, x)}
  return lambda variables, images: {"embeddings": _embed(model, variables, steps.normalize(images, mean, std))}


def routes():
  """:verify and the gallery's routes (serving.py)."""
  return serving.routes()


def upload_result(outputs, input_hw, to_source, source_wh, class_names, k=None):
  """An uploaded image's JSON: its embedding (compare two with :verify, or search a gallery)."""
  del input_hw, to_source, source_wh, class_names, k
  e = np.asarray(outputs["embeddings"], np.float32)
  return {"embedding": e.tolist(), "dim": int(e.shape[-1])}


# ---------------------------------------------------------------------------- report

def calibration(summary):
  """What serving needs to decide "same": the threshold and the FAR it was calibrated at, with its evidence."""
  return {"threshold": summary["threshold"], "far": summary["threshold_far"], "pairs": summary["pairs"],
          "far_resolution": summary["far_resolution"], "tar_at_threshold": float(
              np.mean(np.asarray(summary["scores"])[np.asarray(summary["same"], bool)] > summary["threshold"]))}


def write_report(out, outputs, split, info, summary):
  """out/{metrics.json, calibration.json, pairs.txt, roc.png, scores.png, report.md}."""
  del outputs, info
  os.makedirs(out, exist_ok=True)
  slim = {k: v for k, v in summary.items() if k not in ("scores", "same")}
  with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump(slim, f, indent=2)
  with open(os.path.join(out, "calibration.json"), "w") as f:
    json.dump(calibration(summary), f, indent=2)
  with open(os.path.join(out, "pairs.txt"), "w") as f:
    f.write(pairs_lib.to_text(split.pairs))
  s, same = np.asarray(summary["scores"]), np.asarray(summary["same"], bool)
  plots.plot_roc(s, same, os.path.join(out, "roc.png"), summary)
  plots.plot_histogram(s, same, os.path.join(out, "scores.png"), summary)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(report_markdown(slim))


def report_markdown(r):
  where = f"split `{r['split']}`, checkpoint step {r['step']}" if "split" in r and "step" in r else "evaluation"
  lines = [f"# Verification report: {where}", "",
           f"{r['pairs']} pairs ({r['matched']} matched, {r['mismatched']} mismatched) in {len(r['fold_accuracy'])} "
           "folds; score: cosine of L2-normalised embeddings", "",
           "| metric | value |", "|---|---|",
           f"| 10-fold accuracy | {r['accuracy']:.4f} +- {r['accuracy_std']:.4f} |",
           f"| TAR @ FAR=1e-3 | {r['tar_far1e3']:.4f} |", f"| TAR @ FAR=1e-4 | {r['tar_far1e4']:.4f} |",
           f"| EER | {r['eer']:.4f} |",
           f"| calibrated threshold (FAR {r['threshold_far']:g}) | {r['threshold']:.4f} |",
           f"| FAR resolution (1 / mismatched pairs) | {r['far_resolution']:.1e} |", "",
           "A FAR below the resolution cannot be measured on these pairs: its TAR is that of accepting no "
           "mismatched pair at all.", "",
           "## Folds", "", "| fold | accuracy | threshold |", "|---|---|---|"]
  lines += [f"| {i + 1} | {a:.4f} | {t:.4f} |" for i, (a, t) in enumerate(zip(r["fold_accuracy"], r["thresholds"]))]
  lines += ["", "## ROC", "", "![roc](roc.png)", "", "## Scores", "", "![scores](scores.png)", ""]
  return "\n".join(lines)
