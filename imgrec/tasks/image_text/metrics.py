"""Image-text evaluation on host arrays: retrieval recall@K both ways, and zero-shot accuracy with its confusion."""
import numpy as np

KS = (1, 5, 10)


def unit(z):
  """Rows scaled to unit length, in float64 on the host (two_tower.normalize's twin for numpy arrays)."""
  z = np.asarray(z, np.float64)
  return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


def recall_at(similarity, matches, ks=KS):
  """{k: fraction of queries (rows) with a match among their k most similar columns}; `matches` [Q, C] bool.
  A tie with a match counts against it (the match must be strictly ahead of the k-th other column)."""
  similarity = np.asarray(similarity, np.float64)
  best_match = np.where(matches, similarity, -np.inf).max(axis=1)
  ahead = (np.where(matches, -np.inf, similarity) >= best_match[:, None]).sum(axis=1)  # non-matches not behind it
  return {k: float(np.mean(ahead < k)) for k in ks}


def retrieval(image_embeds, text_embeds, image_of_text, ks=KS):
  """Recall@K of image -> text (an image's captions are its matches) and text -> image (its one image).
  `image_of_text` [T] int: the image each caption describes."""
  sim = unit(image_embeds) @ unit(text_embeds).T
  matches = np.arange(len(image_embeds))[:, None] == np.asarray(image_of_text)[None, :]
  i2t, t2i = recall_at(sim, matches, ks), recall_at(sim.T, matches.T, ks)
  return {**{f"i2t_r{k}": v for k, v in i2t.items()}, **{f"t2i_r{k}": v for k, v in t2i.items()}}


def zero_shot(logits, labels, num_classes):
  """{"accuracy", "top5_accuracy", "confusion" [K, K] (rows: true class)} of zero-shot logits [N, K]."""
  logits, labels = np.asarray(logits), np.asarray(labels)
  pred = logits.argmax(-1)
  top5 = np.argsort(-logits, axis=-1, kind="stable")[:, :5]
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, pred), 1)
  return {"accuracy": float(np.mean(pred == labels)), "top5_accuracy": float(np.mean((top5 == labels[:, None]).any(1))),
          "confusion": confusion}
