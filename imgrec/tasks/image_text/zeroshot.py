"""Zero-shot classification with a two-tower model: each class name written into prompt templates, the text
embeddings of one class's prompts averaged and re-normalised (CLIP's prompt ensembling), images scored against
those class embeddings with the model's own scale and bias: probabilities by sigmoid (SigLIP) or softmax (CLIP).
"""
from typing import NamedTuple

import jax
import numpy as np
import tqdm

from imgrec.errors import UserError
from imgrec.models import two_tower
from imgrec.tasks.image_text import metrics


class Classifier(NamedTuple):
  weights: np.ndarray     # [K, E] unit class embeddings
  scale: float            # exp(t)
  bias: float             # b (0 for CLIP)
  convention: str         # "siglip" | "clip"
  truncated: tuple        # the prompts cut to the text length (said in replies, never silently)


def prompts(class_names, templates):
  """[templates][classes] texts; a template has one "{}" where the class name goes."""
  if not class_names:
    raise UserError("no labels to classify into: give at least one class name")
  bad = [t for t in templates if t.count("{}") != 1]
  if not templates or bad:
    raise UserError(f"prompt templates need exactly one '{{}}' where the label goes, got {bad or templates!r}")
  return [[t.format(c) for c in class_names] for t in templates]


def text_embeddings(model, variables, tok, texts, batch=256):
  """Unit text embeddings [len(texts), E] and the texts that were cut to the tokenizer's length."""
  embed = jax.jit(lambda v, ids: two_tower.normalize(model.apply(v, ids, method="embed_text")))
  out, cut = [], []
  for i in range(0, len(texts), batch):
    enc = tok.encode(texts[i:i + batch])
    out.append(np.asarray(embed(variables, enc.ids)))
    cut += [t for t, c in zip(texts[i:i + batch], enc.truncated) if c]
  return np.concatenate(out), tuple(cut)


def classifier(model, variables, tok, class_names, templates=None):
  """The zero-shot `Classifier` of `class_names`: templates (default: the model's own, from its text.json)
  averaged per class, then re-normalised."""
  templates = list(templates or [tok.template])
  texts = prompts(list(class_names), templates)
  total, cut = 0.0, ()
  for row in tqdm.tqdm(texts, desc="zero-shot prompts", unit="template", disable=len(texts) < 4, leave=False):
    z, c = text_embeddings(model, variables, tok, row)
    total, cut = total + z, cut + c
  weights = np.asarray(two_tower.normalize(total / len(texts)))
  scale, bias = model.apply(variables, method="scale_bias")
  return Classifier(weights, float(scale), float(bias), model.convention, cut)


def logits(clf, image_embeds):
  """[N, K] zero-shot logits of (unnormalised) image embeddings, float32, on the host (a served request's few
  rows: no device round trip)."""
  return (clf.scale * metrics.unit(image_embeds) @ clf.weights.T + clf.bias).astype(np.float32)


def scores(logits_, convention):
  """two_tower.probabilities on the host: sigmoid (SigLIP, each label on its own) or softmax over the labels
  (CLIP)."""
  logits_ = np.asarray(logits_, np.float64)
  if convention == "siglip":
    return (1 / (1 + np.exp(-logits_))).astype(np.float32)
  e = np.exp(logits_ - logits_.max(-1, keepdims=True))
  return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def probabilities(clf, image_embeds):
  return scores(logits(clf, image_embeds), clf.convention)
