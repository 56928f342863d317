"""The image-text task's data: (image, caption tokens) pairs held in memory, from the embedded caption set
(captions.py) or a captions file.

  glyph_captions                  the generated set: train on seen colour/background pairs; "test" is the seen
                                  pairs' test examples followed by the held-out pairs' ("unseen" True on those)
  captions:FILE.jsonl@IMAGES      one JSON object per line, {"image": path under IMAGES, "caption": text} and an
                                  optional "label" (a class name, for zero-shot); data.test_fraction of the lines
                                  (a fixed draw) are the test split. Images are decoded and resized to
                                  data.image_size once, when the data set opens.

Every split is arrays {"image", "tokens", "label", "unseen", "group"} with `take(indices)`: the input pipeline's
in-memory path (no decoding workers). "label" is -1 where a caption has no class. "group" numbers what a caption
says: the generated set's (digit, colour, background), whatever the phrasing; a file's caption text. Retrieval
counts any caption of an image's group as its match.
"""
import json
import os
import tempfile

import cv2
import numpy as np
import tqdm

from imgrec import tokenizer as tokenizer_lib
from imgrec.data import decode as decode_lib, sources
from imgrec.errors import UserError
from imgrec.tasks.image_text import captions

GENERATED = "glyph_captions"
GLYPH_SIZE = 32  # the generated canvases' side when data.image_size is 0


class ArraySplit:
  """A split of equal-length arrays by feature."""

  def __init__(self, arrays):
    self.arrays = {k: np.asarray(v) for k, v in arrays.items()}

  def __len__(self):
    return len(self.arrays["image"])

  @property
  def spec(self):
    return {k: (a.shape[1:], a.dtype.type) for k, a in self.arrays.items()}

  def take(self, indices):
    return {k: a[indices] for k, a in self.arrays.items()}

  def example(self, i, train=False, rng=None):
    del train, rng  # augmentation happens on the device
    return {k: a[i] for k, a in self.arrays.items()}


def tokenizer(cfg):
  """The run's Tokenizer: image_text.tokenizer's folder, or the caption set's word-level one (built in memory
  from a temporary folder: its vocabulary is fixed by captions.py, so every build gives the same ids)."""
  v = cfg.image_text
  if v.tokenizer:
    return tokenizer_lib.load(v.tokenizer)
  with tempfile.TemporaryDirectory() as folder:
    return captions.write_tokenizer(folder, v.text_len)


def _generated(d, tok):
  size = d.image_size or GLYPH_SIZE
  counts = {"train": d.caption_train, "test": d.caption_test, "unseen": d.caption_unseen}
  out = {}
  for name, n in counts.items():
    split = captions.CaptionSplit(name, n, size, d.caption_seed, tok)
    rows = [split.example(i) for i in tqdm.tqdm(range(n), desc=f"captions {name}", unit="image", leave=False,
                                                 disable=n < 2000)]
    out[name] = {k: np.stack([r[k] for r in rows]) for k in ("image", "tokens", "label")}
    out[name]["unseen"] = np.full(n, name == "unseen")
    out[name]["group"] = np.asarray([(int(r["label"]) * len(captions.COLOURS) + int(r["colour"]))
                                     * len(captions.BACKGROUNDS) + int(r["background"]) for r in rows], np.int32)
  test = {k: np.concatenate([out["test"][k], out["unseen"][k]]) for k in out["test"]}
  return sources.Dataset(GENERATED, {"train": ArraySplit(out["train"]), "test": ArraySplit(test),
                                     "unseen": ArraySplit(out["unseen"])}, captions.DIGITS, (size, size, 3))


def read_jsonl(path):
  """[(image path, caption, label or None)] of a captions file, with a clear error for a bad line."""
  rows = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
        row = (str(obj["image"]), str(obj["caption"]), obj.get("label"))
      except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}:{n} is not a JSON object with \"image\" and \"caption\" ({e}); write one "
                        "{\"image\": path, \"caption\": text} per line") from None
      rows.append(row)
  if len(rows) < 2:
    raise UserError(f"{path} has {len(rows)} caption line(s); a train and a test split need at least 2")
  return rows


def _image(path, size):
  try:
    with open(path, "rb") as f:
      image = decode_lib.decode(f.read(), 3)
  except (OSError, decode_lib.BadImage) as e:
    raise UserError(f"unreadable image {path} ({e}); fix or remove its line from the captions file") from None
  return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def _captions_file(source, d, tok):
  spec = source[len("captions:"):]
  path, _, root = spec.partition("@")
  if not os.path.isfile(path):
    raise UserError(f"captions file {path!r} (data.source) not found; give captions:FILE.jsonl@IMAGES")
  if not d.image_size:
    raise UserError("a captions: source needs data.image_size (its images are resized to that square once)")
  root = root or os.path.dirname(os.path.abspath(path))
  rows = read_jsonl(path)
  names = sorted({r[2] for r in rows if r[2] is not None})
  index = {name: i for i, name in enumerate(names)}
  images = np.stack([_image(os.path.join(root, r[0]), d.image_size)
                     for r in tqdm.tqdm(rows, desc="captions", unit="image", leave=False)])
  arrays = {"image": images, "tokens": tok.encode([r[1] for r in rows]).ids,
            "label": np.asarray([index.get(r[2], -1) for r in rows], np.int32), "unseen": np.zeros(len(rows), bool),
            "group": np.unique([r[1] for r in rows], return_inverse=True)[1].astype(np.int32)}
  held = np.random.default_rng(sources.SPLIT_SEED).permutation(len(rows)) < max(1, round(d.test_fraction * len(rows)))
  split = lambda keep: ArraySplit({k: a[keep] for k, a in arrays.items()})
  return sources.Dataset(f"captions:{spec}", {"train": split(~held), "test": split(held)}, tuple(names),
                         (d.image_size, d.image_size, 3))


def open_data(cfg, tok):
  """The data set of cfg.data.source (glyph_captions or captions:FILE.jsonl@IMAGES)."""
  source = cfg.data.source
  if source == GENERATED:
    return _generated(cfg.data, tok)
  if source.startswith("captions:"):
    return _captions_file(source, cfg.data, tok)
  raise UserError(f"data.source {source!r} is not an image-text source; use {GENERATED} or "
                  "captions:FILE.jsonl@IMAGES")
