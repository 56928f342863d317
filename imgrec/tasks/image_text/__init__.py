"""Image-text: two towers (SigLIP / CLIP, imgrec/models/two_tower.py) trained contrastively on captioned images,
judged by zero-shot classification and retrieval. The task contract (imgrec/tasks/__init__.py), filled in.

Examples are {"image", "tokens", "label"} (data.py; the caption set's also "unseen", "group"): the embedded caption
set (glyph canvases whose captions name digit, colour and background; some colour/background pairs never trained
on), a captions file, or any classification data set, whose captions are its class names in the first template.
Training: x = {"image", "tokens"}, the model gives both towers' embeddings and its scale and bias, and the loss
is SigLIP's sigmoid loss or CLIP's softmax contrastive loss (losses.py, image_text.loss); with
image_text.lock_image (LiT) the image embeddings enter it through stop_gradient, so the image tower never moves.
Evaluation: every image's and caption's embedding, and zero-shot logits against the class names written into the
prompt templates (several templates averaged per class and re-normalised, as zeroshot.py does on the host);
then (metrics.py) zero-shot accuracy on the held-out pairs ("zeroshot_accuracy"; every labelled example when the
data has none) and on the seen ones, and image-to-text / text-to-image recall@1/5/10 among the seen test examples
(a caption's matches: every image its words describe as well, data.py's "group"; NaN without captions).
The model does not depend on the data's class names (OPEN_CLASSES): a trained run evaluates zero-shot on any
classification data set, e.g. `imgrec eval --workdir W --config.data.source=digits`.

Served (serving.py): images and/or labels chosen at request time -> image_embeds, zero-shot logits and
probabilities over the labels, or text_embeds; the text tower is an encoder the server compiles and an export
carries beside the image tower's predict, with the tokenizer's files.
"""
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from imgrec import models, steps
from imgrec.data import augment
from imgrec.errors import UserError
from imgrec.models import two_tower
from imgrec.plots import plot_confusion
from imgrec.tasks.image_text import data, losses, metrics, plots, zeroshot
from imgrec.tasks.image_text.serving import (HF_PARAMETERS, IMAGES_OPTIONAL, INPUTS, OUTPUTS, PARAMETERS, hf_result,
                                             make_encoders, postprocess, serve_assets, serve_context, upload_result)
from imgrec.tasks.image_text.settings import (DECODED_SOURCES, DEFAULT_SELECT, MAY_CHANGE, NAME, SELECT,
                                              settings, validate)

__all__ = ("DECODED_SOURCES", "DEFAULT_SELECT", "MAY_CHANGE", "NAME", "SELECT", "settings", "validate", "INPUTS",
           "OUTPUTS", "PARAMETERS", "IMAGES_OPTIONAL", "make_encoders", "serve_assets", "serve_context", "postprocess",
           "upload_result", "hf_result", "HF_PARAMETERS")

RETRIEVAL = tuple(f"{d}_r{k}" for d in ("i2t", "t2i") for k in metrics.KS)
RECORD = ("zeroshot_accuracy", "zeroshot_top5", "zeroshot_seen_accuracy", *RETRIEVAL, "examples")
LINE = ("zeroshot_accuracy", "zeroshot_seen_accuracy", "i2t_r1", "t2i_r1")
N_EXAMPLES = 24  # example images with their top labels in the report
OPEN_CLASSES = True  # the model does not depend on the class names: evaluation may use another data set's
log = logging.getLogger("imgrec")


# ---------------------------------------------------------------------------- data and model

def open_data(cfg):
  """The caption data of cfg.data.source, tokenized with the run's tokenizer (data.py)."""
  return data.open_data(cfg, data.tokenizer(cfg))


def create_model(cfg, info):
  """The two-tower zoo model cfg.model.name, its shared embedding image_text.embed_dim (0: its published one);
  refused when its text tower does not fit the run's tokenizer."""
  del info
  name = cfg.model.name
  if models.family(name) != "two_tower":
    raise UserError(f"the image_text task needs a two-tower model (siglip_b16, clip_b32), not {name!r}")
  dim = cfg.image_text.embed_dim or models.embed_dim(name)
  model = models.create(name, dim, dtype=jnp.dtype(cfg.model.dtype), **cfg.model.kwargs.to_dict())
  text = dict(model.text or {})
  try:
    tok = data.tokenizer(cfg)
  except UserError:  # an import folder without its tokenizer: its image tower still serves (labels are refused)
    return model
  if text.get("max_len") != tok.max_len:
    raise UserError(f"the text tower of {name} takes {text.get('max_len')} tokens but the tokenizer pads to "
                    f"{tok.max_len}: set model.kwargs.text.max_len (or image_text.text_len) so they agree")
  return model


def output_sizes(model, info=None):
  del info
  return {"E": model.num_classes}


# ---------------------------------------------------------------------------- training (inside the jitted step)

def make_inputs(cfg, info):
  """`fn(rng, batch) -> ({"image": augmented float images in [0, 1], "tokens"}, {})`; ops that mix images are
  refused (a mixed image has no one caption)."""
  del info
  ops = augment.unmixed(cfg.data.augment, "an image-text pair needs the image its caption describes")

  def inputs(rng, batch):
    return {"image": augment.apply_images(ops, rng, steps.to_float(batch["image"])), "tokens": batch["tokens"]}, {}
  return inputs


def make_loss(cfg, info, open_run):
  """(`fn(outputs, targets, x, aux) -> (loss, {"pair_accuracy"})`, None): image_text.loss over the batch's
  pairs; pair_accuracy: how often an image's own caption scores highest among the batch's (a training signal:
  a batch may hold the same caption twice). Refused for class-name captions the tokenizer cannot tell apart."""
  del open_run
  v = cfg.image_text
  if data.is_classification(cfg.data.source):
    names, tok = info["class_names"], data.tokenizer(cfg)
    same = _same_prompts(data.class_captions(names, list(v.templates or [tok.template]), tok)[None], names)
    if same:
      raise UserError(f"the captions of classes {same[0]!r} and {same[1]!r} are the same tokens under the run's "
                      "tokenizer (words it does not know): training could not tell them apart; set "
                      "image_text.tokenizer to a folder whose tokenizer knows the class names")

  def loss(outputs, targets, x=None, aux=None):
    del targets, x, aux
    zimg, ztxt = outputs["image_embeds"], outputs["text_embeds"]
    if v.lock_image:
      zimg = jax.lax.stop_gradient(zimg)
    scale, bias = outputs["scale"], outputs["bias"]
    value = (losses.sigmoid_loss(zimg, ztxt, scale, bias) if v.loss == "sigmoid"
             else losses.softmax_loss(zimg, ztxt, scale))
    best = jnp.argmax(two_tower.logits(zimg, ztxt, scale, bias), axis=1)
    return value, {"pair_accuracy": jnp.mean(best == jnp.arange(zimg.shape[0]))}
  return loss, None


# ---------------------------------------------------------------------------- evaluation

def class_tokens(cfg, class_names):
  """Token ids [templates * classes, L] of the zero-shot prompts (image_text.templates, or the tokenizer's own)."""
  tok = data.tokenizer(cfg)
  texts = zeroshot.prompts(list(class_names), list(cfg.image_text.templates or [tok.template]))
  return np.concatenate([tok.encode(row).ids for row in texts])


def _same_prompts(tokens, names):
  """(name, name) of two classes whose prompts are the same token ids under every template (tokens [T, K, L]), or
  None: words the tokenizer does not know become one unknown token."""
  rows = np.asarray(tokens).transpose(1, 0, 2).reshape(len(names), -1)
  _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
  clash = np.flatnonzero(first[inverse.reshape(-1)] != np.arange(len(names)))
  return (names[first[inverse.reshape(-1)][clash[0]]], names[clash[0]]) if len(clash) else None


def class_weights(model, variables, tokens, num_classes):
  """Unit class embeddings [K, E]: each class's prompts embedded, averaged over templates, re-normalised."""
  z = two_tower.normalize(model.apply(variables, tokens, method="embed_text"))
  return two_tower.normalize(z.reshape(-1, num_classes, z.shape[-1]).mean(0))


def make_eval_fn(model, info, cfg):
  """`fn(variables, batch) -> {"image_embeds", "text_embeds", "label", "logits"}` per example; logits: zero-shot
  over info's class names (none when the data has no classes)."""
  names = data.prompt_names(cfg, info["class_names"]) if info["class_names"] else []
  tokens = jnp.asarray(class_tokens(cfg, names)) if names else None
  same = _same_prompts(tokens.reshape(-1, len(names), tokens.shape[-1]), names) if names else None
  if same:
    log.warning("zero-shot: the prompts of classes %r and %r are the same tokens under the run's tokenizer (words "
                "it does not know), so their scores tie; image_text.tokenizer should know the class names", *same)

  def fn(variables, batch):
    zimg = model.apply(variables, steps.normalize(batch["image"], info["mean"], info["std"]), method="embed_image")
    out = {"image_embeds": zimg, "text_embeds": model.apply(variables, batch["tokens"], method="embed_text"),
           "label": batch["label"]}
    if tokens is not None:
      scale, bias = model.apply(variables, method="scale_bias")
      out["logits"] = two_tower.logits(zimg, class_weights(model, variables, tokens, len(names)), scale, bias)
    return out
  return fn


def evaluate(outputs, split, info, cfg):
  """(record, summary) of a split: zero-shot on its unseen and seen examples (a split without held-out pairs:
  on every labelled example), retrieval among its seen ones when it has captions. The examples' top-label probabilities
  are by the trained loss: sigmoid (each label alone) or softmax."""
  labels = np.asarray(outputs["label"])
  whole = len(labels) == len(split)  # False when unreadable images were skipped (data.on_bad_image=skip)
  unseen = split.unseen if whole and split.unseen is not None else np.zeros(len(labels), bool)
  groups = split.groups if whole else None
  record = {"examples": len(labels), **retrieval(outputs, unseen, groups)}
  k = len(info["class_names"])
  logits = np.asarray(outputs["logits"]) if k else np.zeros((len(labels), 0))
  zs = lambda keep: metrics.zero_shot(logits[keep], labels[keep], k) if k and keep.any() else None
  held = zs((labels >= 0) & unseen) or zs(labels >= 0)  # a set with no held-out pairs: all its labelled examples
  seen_zs = zs((labels >= 0) & ~unseen)
  nan = float("nan")  # no labelled examples: no zero-shot figure (a captions file without "label")
  record.update(zeroshot_accuracy=held["accuracy"] if held else nan,
                zeroshot_top5=held["top5_accuracy"] if held else nan,
                zeroshot_seen_accuracy=seen_zs["accuracy"] if seen_zs else nan)
  show = (np.flatnonzero(unseen)[:N_EXAMPLES] if unseen.any() else np.arange(min(N_EXAMPLES, len(labels)))) \
      if whole else np.zeros(0, int)  # a skipped image: positions no longer name the split's examples
  top = np.argsort(-logits[show], axis=1, kind="stable")[:, :3] if k else np.zeros((len(show), 0), int)
  summary = {**record, "class_names": list(info["class_names"]), "held_out_pairs": bool(unseen.any()),
             "confusion": (held["confusion"] if held else np.zeros((k, k), np.int64)).tolist(),
             "examples_shown": show.tolist(), "top_labels": top.tolist(),
             "top_probabilities": (np.take_along_axis(zeroshot.scores(
                 logits[show], "siglip" if cfg.image_text.loss == "sigmoid" else "clip"), top, 1).tolist()
                                   if k else [])}
  return {key: record[key] for key in RECORD}, summary


def retrieval(outputs, unseen, groups):
  """{i2t_rK, t2i_rK} among the seen examples (an image's matches: the captions of its group); NaN without
  captions (`groups` None) or seen examples."""
  seen = np.flatnonzero(~unseen)
  if groups is None or not len(seen):
    return {f"{d}_r{k}": float("nan") for d in ("i2t", "t2i") for k in metrics.KS}
  sim = metrics.unit(outputs["image_embeds"][seen]) @ metrics.unit(outputs["text_embeds"][seen]).T
  group = np.asarray(groups)[seen]
  matches = group[:, None] == group[None, :]  # an image's matches: the captions saying what its own says
  i2t, t2i = metrics.recall_at(sim, matches), metrics.recall_at(sim.T, matches.T)
  return {**{f"i2t_r{k}": i2t[k] for k in metrics.KS}, **{f"t2i_r{k}": t2i[k] for k in metrics.KS}}


def summary_images(result, summary):
  """{TensorBoard tag: (plot function, its arguments but the file)}: the zero-shot confusion matrix."""
  if not summary["class_names"]:
    return {}
  return {f"{result['split']}/zeroshot_confusion": (plot_confusion, summary["confusion"], summary["class_names"])}


def augment_preview(cfg, ds):
  del cfg, ds
  return None


def headline(result):
  keys = ("split", *RECORD, "step")
  return {k: result[k] for k in keys if k in result}


# ---------------------------------------------------------------------------- prediction and serving

def make_predict(model, mean, std, normalized=False):
  """`fn(variables, images) -> {"image_embeds": float32 [B, E]}` (the image tower; uint8 images, or with
  `normalized` standardised float32 ones)."""
  if normalized:
    return lambda variables, x: {"image_embeds": model.apply(variables, x, method="embed_image")}
  return lambda variables, images: {"image_embeds": model.apply(variables, steps.normalize(images, mean, std),
                                                                method="embed_image")}


# ---------------------------------------------------------------------------- report

def write_report(out, outputs, split, info, summary):
  """out/{metrics.json, confusion.png (zero-shot, held-out pairs), examples.png (images with top labels),
  report.md}."""
  del outputs, info
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump(summary, f, indent=2)
  names = summary["class_names"]
  if names:
    plot_confusion(summary["confusion"], names, os.path.join(out, "confusion.png"))
    shown = summary["examples_shown"]
    if shown:
      plots.plot_examples(split.images(shown), split.labels[shown], summary["top_labels"],
                          summary["top_probabilities"], names, os.path.join(out, "examples.png"))
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(report_markdown(summary))


def report_markdown(r):
  where = f"split `{r['split']}`, checkpoint step {r['step']}" if "split" in r and "step" in r else "evaluation"
  held = r.get("held_out_pairs", True)
  which = "held-out attribute pairs" if held else "every labelled example"
  value = lambda v: "n/a" if v != v else f"{v:.4f}"  # NaN: no such examples (retrieval without captions)
  lines = [f"# Image-text report: {where}", "", f"{r['examples']} examples", "", "| metric | value |", "|---|---|",
           f"| zero-shot accuracy, {which} | {value(r['zeroshot_accuracy'])} |",
           f"| zero-shot top-5, {which} | {value(r['zeroshot_top5'])} |"]
  if held:
    lines.append(f"| zero-shot accuracy, seen pairs | {value(r['zeroshot_seen_accuracy'])} |")
  lines += [f"| {'image to text' if d == 'i2t' else 'text to image'} recall@{k} | {value(r[f'{d}_r{k}'])} |"
            for d in ("i2t", "t2i") for k in metrics.KS]
  if r["class_names"]:
    lines += ["", f"## Zero-shot confusion ({which})", "", "![confusion](confusion.png)", ""]
    if r.get("examples_shown", True):
      lines += ["## Examples with their top labels", "", "![examples](examples.png)", ""]
  return "\n".join(lines)
