"""Semantic segmentation: a class per pixel. The task contract (imgrec/tasks/__init__.py), filled in.

Examples (data.py) are {"image", "labels" [h, w] the label map moved with the pixels (255 = ignore),
"source_labels" [S, S] the source-resolution map padded with 255, "to_input" [4] the map from it to the model
input}. The model (model.py) is an FCN or DeepLabV3-ASPP head on a zoo backbone's features, its logits
[N, H, W, K] at the input size; training is pixel cross-entropy with the ignore label and photometric device
augmentation only (geometry happens on the host, where the label map moves with the pixels).

Evaluation (metrics.py) warps each image's logits back to its source pixels and sums ONE confusion matrix over
the split on device (the eval fn's "sums"), so memory does not grow with the split: mIoU, per-class IoU
(NaN for a class absent from both prediction and ground truth, left out of the mean), pixel accuracy and mean
class accuracy, at the source images' resolution. Per example only a small preview of the prediction is kept,
for the report's overlays.

Serving (make_predict): "segmentation" int32 [H, W], the class of each pixel of the model input. Uploads
(upload_result) answer in the uploaded image's own pixels: {"width", "height", "classes": [names], "mask_png":
base64 PNG of class ids (255: no prediction, e.g. outside the model's view), "counts": {label: pixels}}.
"""
import base64
import io
import json
import math
import os

import jax.numpy as jnp
import numpy as np
from PIL import Image

from imgrec import steps
from imgrec.data import augment, preprocess
from imgrec.tasks.contract import Output
from imgrec.tasks.segmentation import data, metrics, model as segmenter, plots
from imgrec.tasks.segmentation.settings import (DECODED_SOURCES, DEFAULT_SELECT, MAY_CHANGE, NAME,  # noqa: F401
                                                SELECT, settings, validate)

RECORD = ("mIoU", "pixel_accuracy", "mean_accuracy", "examples")  # what metrics.jsonl keeps
LINE = ("mIoU", "pixel_accuracy")  # what the trainer's progress line shows
# Device augmentations that leave every pixel and its class as they were (cutout and erase would paint over labelled
# pixels); geometry is host-side, where the label map moves with the pixels.
PHOTOMETRIC = ("brightness", "contrast", "gaussian_noise", "salt_pepper")
# H, W: the model input's size (output_sizes). Class ids as INT32, as the OIP classification outputs carry them.
OUTPUTS = (Output("segmentation", "INT32", ("H", "W")),)
PREVIEW = 96        # the longer side of the per-example prediction kept for the report
REPORT_IMAGES = 8   # test images drawn in the report


# ---------------------------------------------------------------------------- data and model

def open_data(cfg):
  """The segmentation data set named by cfg.data.source (data.py: digit_masks, seg:DIR, tfds:NAME)."""
  return data.open_data(cfg)


def create_model(cfg, info):
  """A segmenter (model.py) on the zoo backbone cfg.model.name (kwargs: cfg.model.kwargs), its head from
  cfg.segmentation."""
  head = {k: cfg.segmentation[k] for k in segmenter.HEAD_KEYS}
  return segmenter.create(cfg.model.name, len(info["class_names"]), dtype=jnp.dtype(cfg.model.dtype), head=head,
                          **cfg.model.kwargs.to_dict())


# ---------------------------------------------------------------------------- training (inside the jitted step)

def make_inputs(cfg, info):
  """`fn(rng, batch) -> (float images in [0, 1], {"labels"})`; photometric device augmentation only."""
  del info
  ops = augment.pixels_stay(cfg.data.augment, NAME, "the label map", PHOTOMETRIC)

  def inputs(rng, batch):
    return augment.apply_images(ops, rng, steps.to_float(batch["image"])), {"labels": batch["labels"]}
  return inputs


def make_loss(cfg, info, open_run):
  """(`fn(outputs, targets, x, aux) -> (loss, {"pixel_accuracy"})`, None): pixel cross-entropy, 255 ignored."""
  del cfg, info, open_run

  def fn(outputs, targets, x, aux):
    del x, aux
    loss, accuracy = metrics.cross_entropy(outputs, targets["labels"])
    return loss, {"pixel_accuracy": accuracy}
  return fn, None


# ---------------------------------------------------------------------------- evaluation

def preview_size(h, w):
  """(rows, cols) of the kept prediction preview: the input's shape with the longer side at most PREVIEW."""
  k = min(1.0, PREVIEW / max(h, w))
  return max(1, round(h * k)), max(1, round(w * k))


def shrink(labels, size):
  """Label maps [..., H, W] -> [..., h, w] by nearest sampling at pixel centres (no ids are blended)."""
  h, w = labels.shape[-2:]
  rows = ((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int32)
  cols = ((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int32)
  return labels[..., rows[:, None], cols[None, :]]


def make_eval_fn(model, info, cfg):
  """`fn(variables, batch) -> {"sums": {"confusion": int32 [K, K]}, "preview": uint8 [B, h, w]}`: the batch's
  confusion matrix at the source resolution (padding and ignored pixels left out), summed over the split by
  steps.stream, and each example's prediction at preview size."""
  del cfg
  k = len(info["class_names"])

  def fn(variables, batch):
    logits = model.apply(variables, steps.normalize(batch["image"], info["mean"], info["std"]), train=False)
    src = batch["source_labels"]
    pred = metrics.to_source(logits, batch["to_input"], src.shape[1])
    valid = batch["mask"][:, None, None] & (src != preprocess.IGNORE)
    preview = shrink(jnp.argmax(logits, -1).astype(jnp.uint8), preview_size(*logits.shape[1:3]))
    return {"sums": {"confusion": metrics.confusion(pred, src, k, valid)}, "preview": preview}
  return fn


def evaluate(outputs, split, info, cfg):
  """(the record metrics.jsonl keeps, the summary the report shows) from the split's summed confusion matrix."""
  del split, cfg
  confusion = np.asarray(outputs["sums"]["confusion"])
  s = metrics.scores(confusion, list(info["class_names"]))
  summary = {**s, "examples": int(len(outputs["preview"])), "confusion": confusion.tolist()}
  return {k: summary[k] for k in RECORD}, summary


def summary_images(record, summary):
  """The final evaluation's images for TensorBoard: {tag: (plot function, its arguments but the file)}."""
  return {f"{record['split']}/class_iou": (plots.plot_class_iou, summary["per_class"])}


def augment_preview(cfg, ds):
  """TensorBoard's augmented training examples: none (the report draws test images with their label maps)."""
  del cfg, ds
  return None


def _json_number(v):
  return None if isinstance(v, float) and math.isnan(v) else v


def headline(summary):
  """The short JSON summary of an evaluation (`imgrec eval --json`); NaN (an absent class) is null."""
  out = {k: summary[k] for k in ("split", "step", *RECORD) if k in summary}
  out["per_class"] = {k: _json_number(v) for k, v in summary["per_class"].items()}
  return {k: _json_number(v) if k != "per_class" else v for k, v in out.items()}


# ---------------------------------------------------------------------------- prediction and serving

def output_sizes(model, info):
  """The named sizes of OUTPUTS: the model input's height and width."""
  del model
  h, w = info["image_shape"][:2]
  return {"H": int(h), "W": int(w)}


def make_predict(model, mean, std, normalized=False):
  """`fn(variables, uint8 images [B, H, W, C]) -> {"segmentation": int32 [B, H, W]}`: each pixel's class; jit it.
  With `normalized` the images are standardised float32."""
  def predict(variables, images):
    logits = model.apply(variables, images if normalized else steps.normalize(images, mean, std), train=False)
    return {"segmentation": jnp.argmax(logits, -1).astype(jnp.int32)}
  return predict


def png_base64(labels):
  """uint8 [H, W] class ids -> base64 text of a greyscale PNG holding them."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(labels, np.uint8)).save(buf, "PNG")
  return base64.b64encode(buf.getvalue()).decode()


def upload_result(outputs, input_hw, to_source, source_wh, class_names, k=None):
  """An uploaded image's JSON (module doc): the predicted class map moved from the model input (input_hw) to
  the upload's own pixels (source_wh = (width, height)) through `to_source` (nearest; 255 where the model saw
  none of the upload), with per-class pixel counts. `k` is unused (every class is answered)."""
  del k, input_hw
  width, height = source_wh
  pred = np.asarray(outputs["segmentation"]).astype(np.uint8)
  mask = preprocess.warp_labels(pred, to_source, int(height), int(width))
  counts = np.bincount(mask[mask != preprocess.IGNORE].ravel(), minlength=len(class_names))
  return {"width": int(width), "height": int(height), "classes": list(class_names), "mask_png": png_base64(mask),
          "counts": {class_names[c]: int(n) for c, n in enumerate(counts[:len(class_names)]) if n}}


def upload_png(result):
  """An upload's class map as PNG bytes (one class index per pixel of the upload, 255 none), for a client whose
  Accept asks for image/png."""
  return base64.b64decode(result["mask_png"])


# ---------------------------------------------------------------------------- report

def write_report(out, outputs, split, info, summary, n_images=REPORT_IMAGES):
  """out/{metrics.json (`summary`, NaN as null), report.md, overlays.png (test images: ground truth and
  prediction overlaid), class_iou.png, confusion.png}."""
  os.makedirs(out, exist_ok=True)
  names = list(info["class_names"])
  with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump({**summary, **headline(summary)}, f, indent=2)
  plots.plot_class_iou(summary["per_class"], os.path.join(out, "class_iou.png"))
  plots.plot_confusion(summary["confusion"], names, os.path.join(out, "confusion.png"))
  previews = np.asarray(outputs["preview"])
  examples = [(i, split.example(i, False, None)) for i in range(min(n_images, len(previews)))]
  examples = [(i, e) for i, e in examples if e is not None]  # an unreadable image under skip
  size = previews.shape[1:3]
  images = [shrink(np.moveaxis(e["image"], -1, 0), size).transpose(1, 2, 0) for _, e in examples]
  truths = [shrink(e["labels"], size) for _, e in examples]
  plots.plot_overlays(images, truths, [previews[i] for i, _ in examples], names, os.path.join(out, "overlays.png"))
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(report_markdown(summary))


def report_markdown(r):
  where = f"split `{r['split']}`, checkpoint step {r['step']}" if "split" in r and "step" in r else "evaluation"
  fmt = lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"
  lines = [f"# Segmentation report: {where}", "",
           f"{r['examples']} images, {r['pixels']} labelled pixels, scored at the source images' resolution from "
           "one confusion matrix over the split. A class absent from both ground truth and prediction has no IoU "
           "(n/a) and is left out of the means.", "",
           "| metric | value |", "|---|---|"]
  lines += [f"| {k} | {fmt(r[k])} |" for k in ("mIoU", "pixel_accuracy", "mean_accuracy")]
  lines += ["", "## Per class IoU", "", "| class | IoU |", "|---|---|"]
  lines += [f"| {name} | {fmt(v)} |" for name, v in r["per_class"].items()]
  lines += ["", "![per-class IoU](class_iou.png)", "", "## Test images", "",
            "Image, ground truth, prediction (at the model input's pixels)", "", "![overlays](overlays.png)", "",
            "## Confusion", "", "![confusion](confusion.png)", ""]
  return "\n".join(lines)
