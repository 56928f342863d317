"""Verification data: training identities, and pairs of images of other identities to judge the embedding on.

Sources (data.source):
  face_glyphs        the embedded set (glyphs.py): data.glyph_images images per identity, data.image_size
                     (0: 32) square, in memory
  identities:DIR     identity folders DIR/IDENTITY/*.jpg (CASIA-WebFace, MS1M as folders, LFW itself), decoded
                     per example with data.pp_train / data.pp_eval
Splits: "train" (the training identities' images, labels 0..K-1 = class_names) and "test" (every image a pair
names once, "label" its identity among the pairs' or -1). The test split carries `.pairs` (pairs.Pairs) and
`.first`, `.second`: each pair's two indices into the split.

Where the pairs come from (config.verification):
  pairs=""           verification.holdout_fraction of the identities (a fixed draw by pairs_seed) are held out
                     of training, and `pairs.draw` deals them to `folds` folds of up to pairs_per_fold matched +
                     as many mismatched pairs (written to the run as pairs.txt by the task)
  pairs=FILE         an LFW-style pairs.txt naming images under verification.pairs_root (default: FILE's
                     folder), e.g. LFW's View 2 over lfw/; every identity of data.source is then trained on
                     (training and test identities must not overlap: CASIA-WebFace and LFW do not by design)
An identity with one image is trained on and never in a matched pair (one warning says how many). A pairs file
naming an image that does not exist is one UserError listing them.
"""
import dataclasses
import logging
import os

import numpy as np

from imgrec.data import sources
from imgrec.data.splits import ArraySplit, subset
from imgrec.errors import UserError
from imgrec.tasks.verification import glyphs, pairs as pairs_lib

log = logging.getLogger("imgrec")

GLYPH_SIZE = 32  # face_glyphs' image size when data.image_size is 0


@dataclasses.dataclass
class PairSplit:
  """The images of a set of pairs (a split), with the pairs as indices into it."""
  split: object
  pairs: pairs_lib.Pairs
  first: np.ndarray
  second: np.ndarray

  def __len__(self):
    return len(self.split)

  @property
  def spec(self):
    return self.split.spec

  @property
  def labels(self):
    return self.split.labels

  def example(self, i, train, rng):
    return self.split.example(i, train, rng)

  def __getattr__(self, name):  # the pipeline's in-memory fast path (take) only where the images split has one
    if name in ("take", "describe", "get") and name != "split" and hasattr(self.split, name):
      return getattr(self.split, name)
    raise AttributeError(name)


def _held_out(names, fraction, seed):
  """Bool mask over `names`: the identities held out for pairs (a fixed draw)."""
  if not 0 < fraction < 1:
    raise UserError(f"verification.holdout_fraction must be between 0 and 1 (exclusive), got {fraction}")
  n = max(2, int(round(len(names) * fraction)))
  if n >= len(names):
    raise UserError(f"{len(names)} identities cannot be split into training and held-out ones; add identities")
  mask = np.zeros(len(names), bool)
  mask[np.random.default_rng(seed).permutation(len(names))[:n]] = True
  return mask


def _index_pairs(p, offsets, counts, where):
  """(first, second) global image indices of the pairs; names or numbers that do not exist are one UserError."""
  bad, out = [], []
  for names, index in ((p.names1, p.index1), (p.names2, p.index2)):
    got = np.zeros(len(p), np.int64)
    for k, (n, i) in enumerate(zip(names, index)):
      if n not in counts or not 1 <= i <= counts[n]:
        bad.append(f"{n} {i} ({counts.get(n, 0)} image(s))")
      else:
        got[k] = offsets[n] + i - 1
    out.append(got)
  if bad:
    raise UserError(f"the pairs name {len(bad)} image(s) that do not exist in {where}, e.g. "
                    f"{'; '.join(sorted(set(bad))[:5])}: fix the pairs file or verification.pairs_root")
  return out


def _pair_split(images_split, p, offsets, counts, where):
  """A PairSplit of the images the pairs name (each once), in index order."""
  first, second = _index_pairs(p, offsets, counts, where)
  used, inverse = np.unique(np.concatenate([first, second]), return_inverse=True)
  return PairSplit(subset(images_split, used), p, inverse[:len(first)], inverse[len(first):])


def _warn_single(counts):
  single = sorted(n for n, c in counts.items() if c == 1)
  if single:
    log.warning("%d identit%s have a single image (e.g. %s): trained on, never in a matched pair", len(single),
                "y" if len(single) == 1 else "ies", single[0])


def _load_glyphs(data_cfg, v):
  size = data_cfg.image_size or GLYPH_SIZE
  per = data_cfg.glyph_images
  if per < 2:
    raise UserError(f"data.glyph_images must be 2 or more (images per glyph identity), got {per}")
  names, _ = glyphs.identities()
  held = _held_out(names, v.holdout_fraction, v.pairs_seed)
  train_ids, test_ids = np.flatnonzero(~held), np.flatnonzero(held)
  images, ids = glyphs.generate(train_ids, per, size, desc="face_glyphs train")
  train = ArraySplit(images, np.searchsorted(train_ids, ids).astype(np.int32))
  test_images, test_ids_per_image = glyphs.generate(test_ids, per, size, desc="face_glyphs held out")
  test = ArraySplit(test_images, np.searchsorted(test_ids, test_ids_per_image).astype(np.int32))
  counts = {names[i]: per for i in test_ids}
  offsets = {names[i]: k * per for k, i in enumerate(test_ids)}
  p = pairs_lib.draw(counts, v.folds, v.pairs_per_fold, v.pairs_seed)
  class_names = tuple(names[i] for i in train_ids)
  return sources.Dataset("face_glyphs", {"train": train, "test": _pair_split(test, p, offsets, counts,
                                                                            "face_glyphs")},
                         class_names, train.images.shape[1:])


def _scan(directory):
  """(identity names, FileSplit of every image, {name: count}, {name: first index})."""
  if not os.path.isdir(directory):
    raise UserError(f"identity folder {directory} not found; it needs one subfolder of images per identity")
  names, split = sources.scan_classes(directory)
  n = np.bincount(split.labels, minlength=len(names))
  if not n.sum():
    raise UserError(f"no identity subfolders with {'/'.join(sources.IMAGE_EXTENSIONS)} files in {directory}")
  starts = np.concatenate([[0], np.cumsum(n)[:-1]])
  return names, split, dict(zip(names, n.tolist())), dict(zip(names, starts.tolist()))


def reading(split, data_cfg):
  total = len(split)
  picks = np.unique(np.linspace(0, total - 1, min(total, sources.HEADER_SAMPLE)).astype(int))
  sample = sources.sample_headers([split.describe(int(i)) for i in picks], data_cfg.get("on_bad_image", "error"))
  if not sample:
    raise UserError(f"none of the sampled images in {split.root} could be read")
  channels = data_cfg.get("channels", 0) or (1 if all(c == 1 for _, _, c in sample) else 3)
  sizes = {(h, w) for w, h, _ in sample}
  photo = len(sizes) > 1 or max(max(s) for s in sizes) > sources.SMALL_IMAGE
  return sources.reading_for(data_cfg, channels, photo, None if len(sizes) > 1 else next(iter(sizes)))


def _load_identities(directory, data_cfg, v):
  names, split, counts, offsets = _scan(directory)
  split.reading = reading(split, data_cfg)
  _warn_single(counts)
  if v.pairs:
    root = v.pairs_root or os.path.dirname(os.path.abspath(v.pairs))
    p = pairs_lib.read(v.pairs)
    if os.path.abspath(root) == os.path.abspath(directory):
      test_split, t_counts, t_offsets = split, counts, offsets
    else:
      _, test_split, t_counts, t_offsets = _scan(root)
      test_split.reading = split.reading
    test = _pair_split(test_split, p, t_offsets, t_counts, root)
    seen = set(names) & (set(p.names1) | set(p.names2))
    if seen:
      log.warning("%d identities of the pairs (e.g. %s) are also training identities of %s: the pairs then do "
                  "not measure unseen identities", len(seen), sorted(seen)[0], directory)
    return sources.Dataset(f"identities:{directory}", {"train": split, "test": test}, tuple(names),
                           split.reading.image_shape, split.reading.pp_train, split.reading.pp_eval)
  held = _held_out(names, v.holdout_fraction, v.pairs_seed)
  train_ids = np.flatnonzero(~held)
  relabel = np.full(len(names), -1, np.int32)
  relabel[train_ids] = np.arange(len(train_ids))
  train = subset(split, np.flatnonzero(~held[split.labels]), relabel)
  held_counts = {names[i]: counts[names[i]] for i in np.flatnonzero(held)}
  p = pairs_lib.draw(held_counts, v.folds, v.pairs_per_fold, v.pairs_seed)
  test = _pair_split(split, p, offsets, counts, directory)
  return sources.Dataset(f"identities:{directory}", {"train": train, "test": test},
                         tuple(names[i] for i in train_ids), split.reading.image_shape, split.reading.pp_train,
                         split.reading.pp_eval)


def open_data(data_cfg, v):
  """The data set of config sections `data` and `verification` (`v`)."""
  source = data_cfg.source
  if source == "face_glyphs":
    if v.pairs:
      raise UserError("verification.pairs names a pairs file, but face_glyphs draws its own pairs from held-out "
                      "glyph identities: unset verification.pairs, or train on identities:DIR")
    return _load_glyphs(data_cfg, v)
  kind, _, arg = source.partition(":")
  if kind == "identities" and arg:
    return _load_identities(arg, data_cfg, v)
  raise UserError(f"unknown verification data source {source!r}; use face_glyphs or identities:DIR "
                  "(DIR/IDENTITY/*.jpg)")
