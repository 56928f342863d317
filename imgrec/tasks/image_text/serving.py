"""Serving a two-tower model with its labels chosen at request time (the tasks contract's optional server hooks).

A request gives images and/or `labels` (BYTES [N]) and the parameter `template` (one "{}" where a label goes; the
model's own default, from its text.json, when absent; "{}" uses the labels as given). The image tower runs in the
server's batcher ("image_embeds"); the text tower runs here, on the host side of a request, through the encoder
the server compiled ("text": token ids -> unit embeddings):

  images + labels   logits [B, N] = exp(t) * cos(image, label) + b, probabilities by the model's convention
                    (sigmoid: SigLIP, each label on its own; softmax: CLIP, the labels compete), image_embeds
  images            image_embeds [B, E] (not normalised)
  labels            text_embeds [N, E] (unit length; template "{}" unless the request names one): retrieval

Text embeddings are cached: an LRU of TEXT_CACHE rows keyed by (template, label) for this model version (the
context is per loaded version), and the unit label matrices of the last LABEL_SETS label lists, so a client that
sends the same labels every time costs the image tower, one lookup and one matrix product. Hits and misses (in
labels) are imgrec_task_events{event="text_cache_hit"|"text_cache_miss"} in /metrics.

A label longer than the text tower's length is cut (the end-of-text token kept last) and named in the reply's
parameters ("truncated_labels"), never silently. The reply's parameters also say the template used.
"""
import collections
import tempfile
import threading

import numpy as np

from imgrec import tokenizer as tokenizer_lib
from imgrec.errors import UserError
from imgrec.models import two_tower
from imgrec.tasks import classification
from imgrec.tasks.contract import Encoder, Output
from imgrec.tasks.image_text import captions, zeroshot

INPUTS = (("labels", "BYTES", ("N",), False),)
PARAMETERS = ("template",)
IMAGES_OPTIONAL = True  # a request of labels alone answers their text embeddings
# E: the shared embedding size; N: the request's labels (free)
OUTPUTS = (Output("image_embeds", "FP32", ("E",)), Output("logits", "FP32", ("N",)),
           Output("probabilities", "FP32", ("N",)), Output("text_embeds", "FP32", ("E",), tfs=False))
TEXT_CACHE = 16384   # (template, label) text embeddings kept per model version
LABEL_SETS = 16      # whole label lists kept as ready matrices
UPLOAD_K = 5         # labels an upload's reply lists when the query gives no k
# Hugging Face's zero-shot image classification JSON: what its parameters are here
HF_PARAMETERS = {"candidate_labels": "labels", "hypothesis_template": "template", "top_k": "k"}


def make_encoders(model, info=None):
  """{"text": token ids int32 [M, L] -> unit text embeddings [M, E]}."""
  del info
  fn = lambda variables, ids: two_tower.normalize(model.apply(variables, ids, method="embed_text"))
  return {"text": Encoder(fn, (model.text_len,), "int32")}


def tokenizer_files(cfg):
  """{name: bytes} of the run's tokenizer (image_text.tokenizer's folder, or the caption set's word-level one)."""
  v = cfg.image_text
  if v.tokenizer:
    return tokenizer_lib.files_of(v.tokenizer)
  with tempfile.TemporaryDirectory() as folder:
    captions.write_tokenizer(folder, v.text_len)
    return tokenizer_lib.files_of(folder)


def serve_assets(run):
  """{"meta": the scores' scale, bias and convention (and why there is no tokenizer, when there is none),
  "files": the tokenizer's}."""
  scale, bias = run.model.apply(run.variables, method="scale_bias")
  meta = {"scale": float(scale), "bias": float(bias), "convention": run.model.convention}
  try:
    files = tokenizer_files(run.cfg)
  except UserError as e:  # an import folder without its tokenizer still serves image embeddings
    files, meta["no_tokenizer"] = {}, str(e)
  return {"meta": meta, "files": files}


class Context:
  """A loaded model's text side: its tokenizer, text encoder, the scores' scale and bias, and the caches."""

  def __init__(self, encode, assets, events):
    meta = assets["meta"]
    self.encode, self.events = encode, events
    self.scale, self.bias, self.convention = meta["scale"], meta["bias"], meta["convention"]
    self.no_tokenizer = meta.get("no_tokenizer")
    self.tok = tokenizer_lib.from_files(assets["files"]) if assets["files"] else None
    self.rows = collections.OrderedDict()   # (template, label) -> (unit embedding [E], truncated)
    self.sets = collections.OrderedDict()   # (template, labels) -> (unit matrix [N, E], truncated labels)
    self.lock = threading.Lock()            # requests' host work runs in worker threads
    self.encoding = threading.Lock()        # held while the text tower embeds labels the cache lacks

  def heavy(self, inputs):
    """Whether a request's host work may be long (labels the cache lacks: the text tower runs), so the server
    runs it off the event loop; a cached label list is a lookup and one small matrix product."""
    if inputs.get("labels") is None or self.tok is None:
      return False
    raw, asked = raw_labels(inputs), inputs.get("template")
    return all((t, raw) not in self.sets for t in ([asked] if asked is not None else [self.tok.template, "{}"]))

  def template(self, asked, default):
    t = default if asked is None else asked
    if t.count("{}") != 1:
      raise UserError(f"parameter 'template' {t!r} needs exactly one '{{}}' where a label goes ('{{}}' alone: the "
                      "labels as given)")
    return t

  def label_matrix(self, labels, raw, template):
    """(unit text embeddings [N, E] of the labels written into `template`, the labels that were cut); `raw`: the
    labels as the request's bytes (the label lists' cache key: no decoding on a hit)."""
    if self.tok is None:
      raise UserError(f"this model has no tokenizer, so it cannot read labels: {self.no_tokenizer}")
    key = (template, raw)
    with self.lock:
      if key in self.sets:
        self.sets.move_to_end(key)
        self.events("text_cache_hit").inc(len(labels))
        return self.sets[key]
      missing = sorted({c for c in labels if (template, c) not in self.rows})
    if missing:  # outside the cache's lock: the text tower may take a while, cached requests go on
      with self.encoding:  # one text-tower pass at a time: a request that waited finds its labels done
        with self.lock:
          todo = [c for c in missing if (template, c) not in self.rows]
        if todo:
          enc = self.tok.encode([template.format(c) for c in todo])
          z = self.encode(enc.ids)
          with self.lock:
            for c, row, cut in zip(todo, z, enc.truncated):
              self.rows[(template, c)] = (row, bool(cut))
      missing = todo
    with self.lock:
      self.events("text_cache_hit").inc(len(labels) - len(missing))
      self.events("text_cache_miss").inc(len(missing))
      got = [self.rows[(template, c)] for c in labels]
      for c in labels:
        self.rows.move_to_end((template, c))
      while len(self.rows) > TEXT_CACHE:
        self.rows.popitem(last=False)
      value = (np.stack([r for r, _ in got]), [c for c, (_, cut) in zip(labels, got) if cut])
      self.sets[key] = value
      while len(self.sets) > LABEL_SETS:
        self.sets.popitem(last=False)
    return value


def serve_context(encoders, assets, events):
  return Context(encoders["text"], assets, events)


def raw_labels(inputs):
  """The request's labels as a tuple of their bytes."""
  return tuple(np.asarray(inputs["labels"], object).reshape(-1))


def labels_of(inputs):
  """The request's labels as str, or None when it gives none."""
  raw = inputs.get("labels")
  if raw is None:
    return None
  try:
    labels = [b.decode("utf-8") for b in raw_labels(inputs)]
  except UnicodeDecodeError:
    raise UserError("input 'labels': every label must be UTF-8 text") from None
  if not labels:
    raise UserError("input 'labels' is empty: give at least one label to score the images against")
  return labels


def postprocess(outputs, inputs, ctx):
  """-> ({output: numpy array}, reply parameters, the labels the scores are over or None) of one request (module
  docstring)."""
  out = {"image_embeds": np.asarray(outputs["image_embeds"], np.float32)} if "image_embeds" in outputs else {}
  labels, params = labels_of(inputs), {}
  if labels is None:
    if not out:
      raise UserError("the request has neither images nor labels")
    return out, params, None
  default = ctx.tok.template if out and ctx.tok is not None else "{}"
  template = ctx.template(inputs.get("template"), default)
  weights, cut = ctx.label_matrix(labels, raw_labels(inputs), template)
  params["template"] = template
  if cut:
    params["truncated_labels"] = cut
  if not out:
    return {"text_embeds": weights.astype(np.float32)}, params, labels
  clf = zeroshot.Classifier(weights, ctx.scale, ctx.bias, ctx.convention, tuple(cut))
  out["logits"] = zeroshot.logits(clf, out["image_embeds"])
  out["probabilities"] = zeroshot.scores(out["logits"], ctx.convention)
  return out, params, labels


def upload_result(outputs, input_hw, to_source, source_wh, class_names, k=None):
  """An uploaded image's JSON: with labels, classification's {"predictions": [{"label", "index", "probability"}]}
  over them (the k, default UPLOAD_K, most probable, best first: bars on the page); its image embedding always."""
  e = np.asarray(outputs["image_embeds"], np.float32)
  result = {"image_embeds": e.tolist(), "dim": int(e.shape[-1])}
  if "probabilities" in outputs:
    result.update(classification.upload_result(outputs, input_hw, to_source, source_wh, class_names, k or UPLOAD_K))
  return result


hf_result = classification.hf_result
