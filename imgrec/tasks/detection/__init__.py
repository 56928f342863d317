"""Detection: boxes and their classes. The task contract (imgrec/tasks/__init__.py), filled in.

Examples are feature dicts {"image", "boxes" [M, 4] x0,y0,x1,y1 in the preprocessed image's pixels, "classes",
"box_mask", "image_id", "to_source"} (data.py; M = data.max_boxes). The model is FCOS on any zoo backbone's features
(model.py); training uses its loss (loss.py) and photometric device augmentation only, because geometry
happens on the host, where boxes move with the pixels. Evaluation decodes inside jit (decode.py) and scores
COCO box mAP with pycocotools (coco_eval.py) against the split's COCO ground truth, in source coordinates.

Serving (make_predict) gives the TF Object Detection API's outputs for K = config.detection.num_detections:
  detection_boxes   float32 [K, 4]  ymin, xmin, ymax, xmax, normalised to [0, 1] by the model input's size
  detection_scores  float32 [K]     descending; 0 past num_detections
  detection_classes float32 [K]     class index + 1 (1-based, as the API's label maps; 0 past num_detections):
                                    class_names[c - 1] names it
  num_detections    float32 []      valid detections
Boxes are relative to the model's input tensor (the letterboxed image), as in the TF Object Detection API. The
server's image uploads (upload_result) answer in the uploaded image's own pixels instead: each box mapped back
through the eval preprocessing's affine map (preprocess.for_model_with_map, transforms.to_source), as
{"label", "class" (0-based index into the class names), "score", "box": [x0, y0, x1, y1]}.
"""
import json
import os

import jax.numpy as jnp
import numpy as np

from imgrec import steps
from imgrec.data import augment
from imgrec.tasks.contract import Output
from imgrec.tasks.detection import coco_eval, data, decode, holdout, loss, model as fcos, plots, transforms
from imgrec.tasks.detection.settings import (DECODED_SOURCES, DEFAULT_SELECT, MAY_CHANGE, NAME, SELECT,  # noqa: F401
                                             settings, validate)

RECORD = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "examples")  # what metrics.jsonl keeps
LINE = ("AP", "AP50", "AP75", "AR100")  # what the trainer's and `imgrec eval`'s lines show of it
# K: config.detection.num_detections (output_sizes). TF-Serving :predict answers with all four, per row.
OUTPUTS = (Output("detection_boxes", "FP32", ("K", 4)), Output("detection_scores", "FP32", ("K",)),
           Output("detection_classes", "FP32", ("K",)), Output("num_detections", "FP32", ()))
REPORT_IMAGES = 12  # test images drawn with their boxes in the report


# ---------------------------------------------------------------------------- data and model

def open_data(cfg):
  """The detection data set named by the config's `data` section (data.py: digit_boxes, coco:DIR,
  coco:ANN.json@IMAGES, tfds:coco/2017), with a "val" split held out of training when data.val_fraction > 0."""
  ds = data.open_data(cfg.data)
  if cfg.data.val_fraction > 0:
    ds = holdout.with_validation(ds, cfg.data.train_split, cfg.data.val_fraction)
  return ds


def create_model(cfg, info):
  """FCOS on the zoo backbone cfg.model.name (kwargs: cfg.model.kwargs), head and decoding from cfg.detection."""
  head = {k: cfg.detection[k] for k in fcos.HEAD_KEYS}
  return fcos.create(cfg.model.name, len(info["class_names"]), dtype=jnp.dtype(cfg.model.dtype), head=head,
                     **cfg.model.kwargs.to_dict())


def output_sizes(model, info):
  """K, the detections kept per image (the model's decoding settings)."""
  del info
  return {"K": model.num_detections}


# ---------------------------------------------------------------------------- training (inside the jitted step)

def make_inputs(cfg, info):
  """`fn(rng, batch) -> (float images in [0, 1], {"boxes", "classes", "box_mask"})`; photometric augmentation
  only (data.augment), since a device op that moved pixels would leave the boxes behind."""
  del info
  ops = augment.pixels_stay(cfg.data.augment, NAME, "the boxes")

  def inputs(rng, batch):
    x = augment.apply_images(ops, rng, steps.to_float(batch["image"]))
    return x, {k: batch[k] for k in ("boxes", "classes", "box_mask")}
  return inputs


def make_loss(cfg, info, open_run):
  """(`fn(outputs, targets, x, aux) -> (loss, {"loss_cls", "loss_box", "loss_ctr", "loss_l1", "positives"})`,
  None): the FCOS objective with config.detection's weights."""
  del info, open_run
  d = cfg.detection

  def fn(outputs, targets, x, aux):
    del x, aux
    return loss.fcos_loss(outputs, targets, d.cls_weight, d.box_weight, d.ctr_weight, d.l1_weight,
                          d.center_radius)
  return fn, None


# ---------------------------------------------------------------------------- evaluation

def _detect(model, variables, images, mean, std, normalized=False):
  """uint8 NHWC (or, `normalized`, standardised float) -> decoded detections in the images' pixels
  (decode.decode's dict)."""
  out = model.apply(variables, images if normalized else steps.normalize(images, mean, std), train=False)
  return decode.decode(out, images.shape[1], images.shape[2], model.num_detections, model.pre_nms_topk,
                       model.nms_iou, model.score_threshold)


def make_eval_fn(model, info, cfg):
  """`fn(variables, batch) -> {"boxes", "scores", "classes", "num_detections", "image_id", "to_source"}` per
  example, for `steps.stream`."""
  del cfg
  mean, std = info["mean"], info["std"]
  return lambda v, b: {**_detect(model, v, b["image"], mean, std), "image_id": b["image_id"],
                       "to_source": b["to_source"]}


def evaluate(outputs, split, info, cfg):
  """(the record metrics.jsonl keeps, the summary the report shows) of a split's streamed detections: COCO box
  mAP against the split's ground truth (split.coco_ground_truth(), source pixels, COCO category ids)."""
  del info, cfg
  category_ids = list(split.category_ids)
  results = coco_eval.to_results(outputs, category_ids)
  metrics, per_class, curves = coco_eval.evaluate(split.coco_ground_truth(), results,
                                                  dict(zip(category_ids, split.class_names)))
  n = int(len(outputs["image_id"]))
  summary = {**metrics, "examples": n, "detections": len(results), "per_class": per_class,
             "curves": {k: [float(v) for v in c] for k, c in curves.items()}}
  return {k: summary[k] for k in RECORD}, summary


def summary_images(result, summary):
  """The final evaluation's images for TensorBoard: {tag: (plot function, its arguments but the file)}."""
  return {f"{result['split']}/precision_recall": (plots.plot_pr_curves, summary["curves"], summary["per_class"])}


def augment_preview(cfg, ds):
  """TensorBoard's augmented training examples: none for detection (the report draws test images with boxes)."""
  del cfg, ds
  return None


def headline(result):
  """The short JSON summary of an evaluation (`imgrec eval --json`)."""
  return {k: result[k] for k in ("split", "step", *RECORD, "detections") if k in result}


# ---------------------------------------------------------------------------- prediction and serving

def make_predict(model, mean, std, normalized=False):
  """`fn(variables, uint8 images [B, H, W, C]) -> {TF Object Detection API output: [B, ...]}` (module doc),
  decoding included; jit it (static shapes). With `normalized` the images are standardised float32."""
  def predict(variables, images):
    h, w = images.shape[1:3]
    det = _detect(model, variables, images, mean, std, normalized)
    b, n = det["boxes"], det["num_detections"]
    valid = jnp.arange(b.shape[1])[None, :] < n[:, None]
    return {"detection_boxes": jnp.stack([b[..., 1] / h, b[..., 0] / w, b[..., 3] / h, b[..., 2] / w], -1),
            "detection_scores": det["scores"],
            "detection_classes": jnp.where(valid, det["classes"] + 1, 0).astype(jnp.float32),
            "num_detections": n.astype(jnp.float32)}
  return predict


def upload_result(outputs, input_hw, to_source, source_wh, class_names, k=None):
  """An uploaded image's JSON: {"width", "height", "detections": [{"label", "class", "score", "box"}]}, best
  first, at most k (None: all num_detections). `outputs`: make_predict's for this image; its boxes are mapped
  from the model input's (height, width) `input_hw` through `to_source` onto the upload of size `source_wh`
  (width, height) and clipped to it; a box left with no area there (wholly in the letterbox padding) is no
  detection of the upload and is left out."""
  (h, w), (width, height) = input_hw, source_wh
  n = int(outputs["num_detections"])
  ymin, xmin, ymax, xmax = np.asarray(outputs["detection_boxes"][:n], np.float64).T
  boxes = transforms.to_source(np.stack([xmin * w, ymin * h, xmax * w, ymax * h], 1), to_source, width, height)
  detections = []
  for box, score, c in zip(boxes, outputs["detection_scores"][:n], outputs["detection_classes"][:n]):
    if box[2] > box[0] and box[3] > box[1]:
      c = int(c) - 1  # detection_classes is 1-based
      detections.append({"label": class_names[c], "class": c, "score": float(score),
                         "box": [float(v) for v in box]})
  return {"width": int(width), "height": int(height), "detections": detections[:k]}


# ---------------------------------------------------------------------------- report

def write_report(out, outputs, split, info, summary, n_images=REPORT_IMAGES):
  """out/{metrics.json (`summary`), report.md, detections.png (test images, true and predicted boxes),
  precision_recall.png (PR curves and per-class AP)}."""
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump(summary, f, indent=2)
  plots.plot_pr_curves(summary["curves"], summary["per_class"], os.path.join(out, "precision_recall.png"))
  n = min(n_images, len(outputs["image_id"]))
  examples = [split.example(i, False, None) for i in range(n)]  # outputs are in split order
  examples = [(i, e) for i, e in enumerate(examples) if e is not None]  # an unreadable image under skip
  idx = [i for i, _ in examples]
  stack = lambda key: np.stack([e[key] for _, e in examples]) if examples else np.zeros((0,))
  truth = (stack("boxes"), stack("classes"), stack("box_mask"))
  preds = tuple(np.asarray(outputs[k])[idx] for k in ("boxes", "scores", "classes", "num_detections"))
  plots.plot_detections(stack("image") if examples else [], truth, preds, list(info["class_names"]),
                        os.path.join(out, "detections.png"))
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(report_markdown(summary))


def report_markdown(r):
  where = f"split `{r['split']}`, checkpoint step {r['step']}" if "split" in r and "step" in r else "evaluation"
  lines = [f"# Detection report: {where}", "",
           f"{r['examples']} images, {r['detections']} detections; COCO box metrics (pycocotools), -1 where the "
           "split has no ground truth of that size", "",
           "| metric | value |", "|---|---|"]
  lines += [f"| {k} | {r[k]:.4f} |" for k in coco_eval.STATS]
  lines += ["", "## Per class (AP at IoU 0.50:0.95)", "", "| class | AP |", "|---|---|"]
  lines += [f"| {name} | {ap:.4f} |" for name, ap in r["per_class"].items()]
  lines += ["", "## Precision-recall", "", "![precision-recall](precision_recall.png)", "",
            "## Test images", "", "![detections](detections.png)", ""]
  return "\n".join(lines)
