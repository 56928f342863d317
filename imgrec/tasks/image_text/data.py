"""The image-text task's data: (image, caption tokens) pairs, from the embedded caption set (captions.py), a
captions file, or any classification data set (zero-shot from its class names).

  glyph_captions                  the generated set: train on seen colour/background pairs; "test" is the seen
                                  pairs' test examples followed by the held-out pairs' ("unseen" True on those)
  captions:FILE.jsonl@IMAGES      one JSON object per line, {"image": path under IMAGES, "caption": text} and an
                                  optional "label" (a class name, for zero-shot); data.test_fraction of the lines
                                  (a fixed draw) are the test split. Images are decoded and resized to
                                  data.image_size once, when the data set opens.
  captions:DIR                    the same, from DIR/captions.jsonl with image paths under DIR
  digits, fashion_mnist, idx:DIR, folder:DIR, tfds:NAME, ...
                                  any source of the classification task, read by its open_data (so its splits,
                                  data.pp_* on folder: and tfds:, data.val_fraction); images made RGB, and resized
                                  to DEFAULT_SIZE when neither data.image_size nor data.pp_* gives a size, so a run
                                  trained on 32x32 captions evaluates on them. Its caption is the image's class name
                                  written into the first zero-shot template (contrastive tuning on class names); it
                                  has no retrieval (no captions of its own).

A split gives what the task contract asks (len, spec, example; `take` when in memory) and what evaluation reads:
`labels` int32 [N] (-1 where a caption has no class), `unseen` bool [N] (a held-out attribute pair), `groups`
int32 [N] or None (no captions: no retrieval) and `images(indices)` (the report's examples). "group" numbers what
a caption says: the generated set's (digit, colour, background), whatever the phrasing; a file's caption text.
Retrieval counts any caption of an image's group as its match.
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
from imgrec.tasks import classification
from imgrec.tasks.image_text import captions, zeroshot
from imgrec.tasks.image_text.settings import DECODED_SOURCES

GENERATED = "glyph_captions"
CAPTIONS_FILE = "captions.jsonl"  # captions:DIR reads DIR/captions.jsonl, its image paths relative to DIR
DEFAULT_SIZE = 32  # the side of the generated canvases, and of any source's images, when nothing else sets one


class ArraySplit:
  """A split of equal-length arrays by feature ("image", "tokens", "label"; "unseen", "group" when it has them)."""

  def __init__(self, arrays):
    self.arrays = {k: np.asarray(v) for k, v in arrays.items()}

  def __len__(self):
    return len(self.arrays["image"])

  @property
  def spec(self):
    return {k: (a.shape[1:], a.dtype.type) for k, a in self.arrays.items()}

  @property
  def labels(self):
    return self.arrays["label"]

  @property
  def unseen(self):
    return self.arrays["unseen"] if "unseen" in self.arrays else np.zeros(len(self), bool)

  @property
  def groups(self):
    return self.arrays.get("group")

  def images(self, indices):
    return self.arrays["image"][np.asarray(indices, np.int64)]

  def take(self, indices):
    return {k: a[indices] for k, a in self.arrays.items()}

  def example(self, i, train=False, rng=None):
    del train, rng  # augmentation happens on the device
    return {k: a[i] for k, a in self.arrays.items()}


def rgb(images):
  """uint8 [..., H, W, C] with C 1 or 3 as RGB (a grey image's one channel three times): the image tower's input."""
  return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


class ClassSplit:
  """A classification split whose images are decoded when read (folder:, tfds:), as image-text examples: the
  image made RGB, the tokens of its class's caption. Sent to the data workers like the split it wraps."""

  def __init__(self, split, class_tokens):
    self.split, self.class_tokens = split, np.asarray(class_tokens, np.int32)
    shape = split.spec["image"][0]
    self.spec = {"image": ((*shape[:2], 3), np.uint8), "tokens": (self.class_tokens.shape[1:], np.int32),
                 "label": ((), np.int32)}
    self.unseen, self.groups = None, None  # no held-out pairs, no captions of its own

  def __len__(self):
    return len(self.split)

  @property
  def reading(self):
    return self.split.reading

  @property
  def labels(self):
    return self.split.labels

  def describe(self, i):
    return self.split.describe(i)

  def example(self, i, train, rng):
    got = self.split.example(i, train, rng)
    if got is None:
      return None
    return {"image": rgb(got["image"]), "tokens": self.class_tokens[got["label"]], "label": np.int32(got["label"])}

  def images(self, indices):
    return rgb(self.split.get(np.asarray(indices, np.int64))[0])


def tokenizer(cfg):
  """The run's Tokenizer: image_text.tokenizer's folder, or the caption set's word-level one (built in memory
  from a temporary folder: its vocabulary is fixed by captions.py, so every build gives the same ids)."""
  v = cfg.image_text
  if v.tokenizer:
    return tokenizer_lib.load(v.tokenizer)
  with tempfile.TemporaryDirectory() as folder:
    return captions.write_tokenizer(folder, v.text_len)


def _generated(d, tok):
  size = d.image_size or DEFAULT_SIZE
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
  if os.path.isdir(path):  # a folder of images with its captions file
    path = os.path.join(path, CAPTIONS_FILE)
  if not os.path.isfile(path):
    raise UserError(f"captions file {path!r} (data.source) not found; give captions:FILE.jsonl@IMAGES, or "
                    f"captions:DIR with DIR/{CAPTIONS_FILE}")
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


def prompt_names(cfg, class_names):
  """The names written into the prompts: image_text.prompt_names (one per class, in the data's order), else the
  data's class names."""
  names = list(cfg.image_text.prompt_names or class_names)
  if len(names) != len(class_names):
    raise UserError(f"image_text.prompt_names gives {len(names)} names for the {len(class_names)} classes of "
                    f"{cfg.data.source} ({', '.join(map(str, class_names[:5]))}...): give one per class, in that order")
  return names


def class_captions(class_names, templates, tok):
  """Token ids [K, L]: each class name written into the first template (a classification source's captions), with
  a clear error for a class without a name."""
  blank = [i for i, name in enumerate(class_names) if not str(name).strip()]
  if not class_names or blank:
    what = f"class {blank[0]} has an empty one" if blank else "the data set has none"
    raise UserError(f"zero-shot needs every class's name, but {what}: name its folder (folder:DIR), or use a "
                    "source whose labels have names")
  return tok.encode(zeroshot.prompts(list(class_names), list(templates[:1]))[0]).ids


def _classification(cfg, tok):
  """A classification source (classification.open_data: its splits, data.val_fraction carved out as "val") as
  image-text data: RGB images at the run's size, class-name captions, labels."""
  cfg = cfg.copy_and_resolve_references()
  d = cfg.data
  if not (d.image_size or d.pp_train or d.pp_eval):
    d.image_size = DEFAULT_SIZE
  try:
    ds = classification.open_data(cfg)
  except UserError as e:
    if str(e).startswith("unknown data source"):  # name the image-text sources too
      raise UserError(f"{e}; or the image-text sources {GENERATED} and captions:FILE.jsonl@IMAGES") from None
    raise
  class_tokens = class_captions(prompt_names(cfg, ds.class_names), list(cfg.image_text.templates or [tok.template]),
                                tok)
  splits = {}
  for name, split in ds.splits.items():
    if d.source.startswith(DECODED_SOURCES):
      splits[name] = ClassSplit(split, class_tokens)
    else:  # in memory: arrays, read by the pipeline without workers
      images, labels = split.get(np.arange(len(split)))
      splits[name] = ArraySplit({"image": rgb(images), "tokens": class_tokens[labels], "label": labels})
  return sources.Dataset(ds.name, splits, tuple(ds.class_names), (*ds.image_shape[:2], 3), ds.pp_train, ds.pp_eval)


def with_validation(ds, train_split, fraction):
  """The data set with a "val" split of `fraction` of `train_split`'s examples (a fixed draw, independent of the
  run's seed), taken out of it."""
  if "val" in ds.splits:
    raise UserError(f"data set {ds.name!r} already has a val split; set data.val_fraction=0 and "
                    "data.eval_split=val to use it")
  if not 0 < fraction < 1:
    raise UserError(f"data.val_fraction must be between 0 and 1, got {fraction}")
  split = ds.split(train_split)
  n = len(split)
  held = np.random.default_rng(sources.SPLIT_SEED).permutation(n) < min(n - 1, max(1, round(fraction * n)))
  cut = lambda keep: ArraySplit({k: a[keep] for k, a in split.arrays.items()})
  return sources.Dataset(ds.name, {**ds.splits, train_split: cut(~held), "val": cut(held)}, ds.class_names,
                         ds.image_shape, ds.pp_train, ds.pp_eval)


def is_classification(source):
  """Whether data.source names a classification source (not one of the caption sources)."""
  return source != GENERATED and not source.startswith("captions:")


def open_data(cfg, tok):
  """The data set of cfg.data.source: glyph_captions, captions:FILE.jsonl@IMAGES, or a classification source;
  with data.val_fraction, a "val" split out of the training one."""
  source, d = cfg.data.source, cfg.data
  if is_classification(source):
    return _classification(cfg, tok)  # classification.open_data carves its val split
  ds = _generated(d, tok) if source == GENERATED else _captions_file(source, d, tok)
  return with_validation(ds, d.train_split, d.val_fraction) if d.val_fraction > 0 else ds
